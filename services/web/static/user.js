// The user page: "Recommended for you" (why and how well each matches, with a rating form) and the user's
// ratings, most recent first, a page at a time.
"use strict";

const userId = idFromPath();
const RECOMMENDATIONS = 12;
const RATED_PAGE = 12;

document.getElementById("heading").textContent = `User ${userId}`;
document.title = `Starling: user ${userId}`;

function renderRecommendations(reply) {
  const meta = [`model ${reply.model_version || "?"}`];
  if (reply.degraded.length) {
    meta.push("served with fallbacks: " + reply.degraded.map((d) => `${d.stage} (${d.reason})`).join("; "));
  }
  document.getElementById("rec-meta").textContent = meta.join(" · ");
  const cards = reply.items.map((item) => movieCard(item, { userId, onRate: rate }));
  document.getElementById("recommendations").replaceChildren(...cards);
}

// Shows the first ``shown`` ratings again (after a rating, the list is read anew), then "More" pages on.
let shownRatings = RATED_PAGE;
let shownRequestId = null; // the request_id of the recommendations on the page: a rating names it

function renderRated(reply, append = false) {
  const list = document.getElementById("rated");
  const rows = reply.ratings.map((entry) => ratedRow(entry, userId));
  if (append) list.append(...rows);
  else list.replaceChildren(...rows);
  if (!reply.total) list.replaceChildren(el("li", { class: "empty" }, "No ratings yet: rate a recommendation."));
  const shown = list.querySelectorAll("li[data-movie-id]").length;
  shownRatings = Math.max(shown, RATED_PAGE);
  document.getElementById("rated-count").textContent = reply.total ? `${shown} of ${reply.total}` : "";
  const more = document.getElementById("rated-more");
  more.hidden = shown >= reply.total;
}

function ratingsPage(offset, limit) {
  return api(`/api/users/${encodeURIComponent(userId)}/ratings?limit=${limit}&offset=${offset}`);
}

async function load() {
  const [recommended, rated] = await Promise.all([
    api(`/api/users/${encodeURIComponent(userId)}/recommendations?k=${RECOMMENDATIONS}`),
    ratingsPage(0, shownRatings),
  ]);
  renderRecommendations(recommended);
  renderRated(rated);
  shownRequestId = recommended.request_id;
  return recommended;
}

document.getElementById("rated-more").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    clearError();
    const shown = document.querySelectorAll("#rated li[data-movie-id]").length;
    renderRated(await ratingsPage(shown, RATED_PAGE), true);
  } catch (err) {
    showError(`Could not load more ratings: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

// Send the rating, then reload both lists; the service applies feedback within about a second, so reload
// until the rated movie has left the recommendations (a few tries).
async function rate(item, rating, card) {
  const status = document.getElementById("status");
  setBusy(card, true);
  document.body.dataset.state = "saving";
  status.textContent = `Saving ${rating} ★ for ${item.title}…`;
  try {
    clearError();
    await sendRating(userId, item.movie_id, rating, shownRequestId);
    for (let attempt = 0; attempt < 8; attempt++) {
      const recommended = await load();
      if (!recommended.items.some((other) => other.movie_id === item.movie_id)) break;
      await sleep(250);
    }
    status.textContent = `Rated ${item.title}: ${rating} ★`;
    document.body.dataset.state = "ready";
  } catch (err) {
    status.textContent = "";
    setBusy(card, false);
    showError(`Could not rate ${item.title}: ${err.message}`);
  }
}

load()
  .then(() => (document.body.dataset.state = "ready"))
  .catch((err) => showError(err.message));
