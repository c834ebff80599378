// Home page: title search (GET /api/movies?q=), results as links to the movie pages, 20 at a time; rows of
// the most rated movies, overall and in the most watched genres (GET /api/popular).
"use strict";

const PAGE = 20;

async function searchMovies(query, offset = 0) {
  const status = document.getElementById("search-status");
  const list = document.getElementById("search-results");
  document.body.dataset.state = "searching";
  try {
    clearError();
    const reply = await api(`/api/movies?q=${encodeURIComponent(query)}&limit=${PAGE}&offset=${offset}`);
    if (offset === 0) list.replaceChildren();
    for (const movie of reply.movies) {
      list.append(
        el(
          "li",
          { "data-movie-id": movie.movie_id },
          el("a", { href: movieHref(movie.movie_id) }, movie.title),
          el("span", { class: "meta" }, ` ${metaLine(movie)}`),
        ),
      );
    }
    const shown = offset + reply.movies.length;
    status.textContent = reply.total ? `${shown} of ${reply.total} movies match "${query}"` : `No movie matches "${query}"`;
    document.getElementById("search-more")?.remove();
    if (shown < reply.total) {
      const more = el("button", { type: "button", id: "search-more" }, "More results");
      more.addEventListener("click", () => searchMovies(query, shown));
      list.after(more);
    }
    document.body.dataset.state = "ready";
  } catch (err) {
    showError(`Search failed: ${err.message}`);
  }
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = new FormData(event.target).get("q").trim();
  if (query) searchMovies(query);
});

const ROW = 8;
const GENRE_ROWS = 4;

function popularRow(id, heading, movies) {
  return el(
    "section",
    { id, class: "row", "aria-label": heading },
    el("h2", {}, heading),
    el("div", { class: "grid" }, ...movies.map((movie) => movieCard(movie))),
  );
}

async function loadPopularRows() {
  const overall = await api(`/api/popular?limit=${ROW}`);
  const genres = overall.genres.filter((genre) => !genre.startsWith("(")).slice(0, GENRE_ROWS);
  const perGenre = await Promise.all(genres.map((genre) => api(`/api/popular?genre=${encodeURIComponent(genre)}&limit=${ROW}`)));
  document
    .getElementById("popular-rows")
    .replaceChildren(
      popularRow("popular", "Most rated", overall.movies),
      ...perGenre.map((reply, i) => popularRow(`popular-${genres[i].toLowerCase().replace(/[^a-z0-9]+/g, "-")}`, `Most rated in ${genres[i]}`, reply.movies)),
    );
}

loadPopularRows()
  .then(() => (document.body.dataset.state = "ready"))
  .catch((err) => showError(`Could not load popular movies: ${err.message}`));
