// The movie page: details from the catalog and similar movies.
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

async function load() {
  const [movie, similar] = await Promise.all([
    api(`/api/movies/${encodeURIComponent(movieId)}`),
    api(`/api/movies/${encodeURIComponent(movieId)}/similar?k=${SIMILAR}`),
  ]);
  renderDetails(movie);
  document.getElementById("similar").replaceChildren(...similar.items.map((item) => movieCard(item, { userId })));
}

load()
  .then(() => (document.body.dataset.state = "ready"))
  .catch((err) => showError(err.message));
