// The movie page: details from the catalog, the visiting user's rating (with ?user=, rate it here) and similar
// movies.
"use strict";

const movieId = idFromPath();
const userId = new URLSearchParams(window.location.search).get("user");
const SIMILAR = 12;

if (userId) {
  const back = document.getElementById("back");
  back.href = `/users/${encodeURIComponent(userId)}`;
  back.textContent = `← back to user ${userId}`;
  back.hidden = false;
}

function renderDetails(movie) {
  document.title = `Starling: ${movie.title}`;
  const rating =
    movie.avg_rating === null ? "not rated yet" : `${movie.avg_rating.toFixed(2)} average from ${movie.rating_count} ratings`;
  const facts = el(
    "dl",
    {},
    el("dt", {}, "Year"),
    el("dd", {}, movie.release_year ? String(movie.release_year) : "unknown"),
    el("dt", {}, "Genres"),
    el("dd", {}, movie.genres.join(", ") || "none listed"),
    el("dt", {}, "Ratings"),
    el("dd", { id: "movie-rating" }, rating),
    el("dt", {}, "Movie id"),
    el("dd", {}, String(movie.movie_id)),
  );
  document
    .getElementById("details")
    .replaceChildren(poster(movie.title, movie.release_year), el("div", {}, el("h1", { id: "heading" }, movie.title), facts));
}

function renderYourRating(movie, entry) {
  const box = document.getElementById("your-rating");
  const said = entry
    ? `You rated it ${starText(entry.rating)} ${entry.rating} on ${new Date(entry.time_unix_ms).toLocaleDateString()}.`
    : "You have not rated it yet.";
  box.replaceChildren(
    el("h2", {}, `Your rating (user ${userId})`),
    el("p", { id: "your-rating-text", class: "meta" }, said),
    ratingForm(movie.title, (rating) => rate(movie, rating), entry ? entry.rating : null),
  );
  box.hidden = false;
}

async function yourRating() {
  const reply = await api(`/api/users/${encodeURIComponent(userId)}/ratings?movie=${encodeURIComponent(movieId)}&limit=1`);
  return reply.ratings[0] || null;
}

async function rate(movie, rating) {
  const box = document.getElementById("your-rating");
  const status = document.getElementById("status");
  setBusy(box, true);
  document.body.dataset.state = "saving";
  status.textContent = `Saving ${rating} ★ for ${movie.title}…`;
  try {
    clearError();
    await sendRating(userId, movie.movie_id, rating);
    let entry = await yourRating();
    for (let attempt = 0; attempt < 8 && (!entry || entry.rating !== rating); attempt++) {
      await sleep(250);
      entry = await yourRating();
    }
    renderYourRating(movie, entry);
    status.textContent = `Rated ${movie.title}: ${rating} ★`;
    document.body.dataset.state = "ready";
  } catch (err) {
    status.textContent = "";
    setBusy(box, false);
    showError(`Could not rate ${movie.title}: ${err.message}`);
  }
}

async function load() {
  const [movie, similar, entry] = await Promise.all([
    api(`/api/movies/${encodeURIComponent(movieId)}`),
    api(`/api/movies/${encodeURIComponent(movieId)}/similar?k=${SIMILAR}`),
    userId ? yourRating() : null,
  ]);
  renderDetails(movie);
  if (userId) renderYourRating(movie, entry);
  document.getElementById("similar").replaceChildren(...similar.items.map((item) => movieCard(item, { userId })));
}

load()
  .then(() => (document.body.dataset.state = "ready"))
  .catch((err) => showError(err.message));
