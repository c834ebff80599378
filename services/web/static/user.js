// The user page: "Recommended for you" with rating buttons, and the user's rated movies.
"use strict";

const userId = idFromPath();
const RECOMMENDATIONS = 12;
const RATED = 12;

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

function renderRated(reply) {
  const list = document.getElementById("rated");
  if (!reply.ratings.length) {
    list.replaceChildren(el("li", { class: "empty" }, "No ratings yet: rate a recommendation."));
    return;
  }
  list.replaceChildren(
    ...reply.ratings.map((entry) =>
      el(
        "li",
        { "data-movie-id": entry.movie.movie_id },
        el("a", { href: movieHref(entry.movie.movie_id, userId), tabindex: "-1" }, poster(entry.movie.title, null, { compact: true })),
        el(
          "div",
          {},
          el("a", { href: movieHref(entry.movie.movie_id, userId), class: "title" }, entry.movie.title),
          el("p", { class: "meta" }, metaLine(entry.movie)),
          el(
            "p",
            { class: "stars", title: `${entry.rating} of 5` },
            starText(entry.rating),
            el("span", { class: "when" }, ` ${entry.rating} · ${new Date(entry.time_unix_ms).toLocaleDateString()}`),
          ),
        ),
      ),
    ),
  );
}

async function load() {
  const [recommended, rated] = await Promise.all([
    api(`/api/users/${encodeURIComponent(userId)}/recommendations?k=${RECOMMENDATIONS}`),
    api(`/api/users/${encodeURIComponent(userId)}/ratings?limit=${RATED}`),
  ]);
  renderRecommendations(recommended);
  renderRated(rated);
  return recommended;
}

// The gateway accepts ratings only for the signed-in user (a SameSite session cookie): sign in as this page's
// user once (open sign-in: the demo has no accounts).
let session = null;
function signIn() {
  session ??= api("/api/session", { method: "POST", body: JSON.stringify({ user_id: Number(userId) }) }).catch(
    (err) => {
      session = null;
      throw err;
    },
  );
  return session;
}

// Send the rating, then reload both lists; the service applies feedback within about a second, so reload
// until the rated movie has left the recommendations (a few tries).
async function rate(item, rating, card) {
  const status = document.getElementById("status");
  card.classList.add("pending");
  card.querySelectorAll("button").forEach((button) => (button.disabled = true));
  document.body.dataset.state = "saving";
  status.textContent = `Saving ${rating} ★ for ${item.title}…`;
  try {
    clearError();
    await signIn();
    await api("/api/feedback", {
      method: "POST",
      body: JSON.stringify({ user_id: Number(userId), movie_id: item.movie_id, rating }),
    });
    for (let attempt = 0; attempt < 8; attempt++) {
      const recommended = await load();
      if (!recommended.items.some((other) => other.movie_id === item.movie_id)) break;
      await sleep(250);
    }
    status.textContent = `Rated ${item.title}: ${rating} ★`;
    document.body.dataset.state = "ready";
  } catch (err) {
    status.textContent = "";
    card.classList.remove("pending");
    card.querySelectorAll("button").forEach((button) => (button.disabled = false));
    showError(`Could not rate ${item.title}: ${err.message}`);
  }
}

load()
  .then(() => (document.body.dataset.state = "ready"))
  .catch((err) => showError(err.message));
