// Shared by every page: DOM helpers, the /api client, poster placeholders and movie cards. No dependencies.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

// el("a", {href: "/x", class: "y"}, "text", child): builds an element; text is always set as text, never HTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

// GET or POST JSON; a non-2xx answer throws an Error carrying the gateway's message and code.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  } catch (err) {
    throw new Error(`cannot reach the web gateway (${err.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.code = body.code;
    throw error;
  }
  return body;
}

// The last path segment, e.g. "1" for /users/1 (the gateway checks that it is a number).
function idFromPath() {
  return decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || "");
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
  document.body.dataset.state = "error";
}

function clearError() {
  document.getElementById("error").hidden = true;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// FNV-1a: a stable 32-bit hash of the title, so a movie always gets the same colours.
function hashString(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash;
}

function initials(title) {
  const words = title.replace(/,\s*(The|A|An|Les|La|Le|Il|Das|Die|Der)$/i, "").match(/[\p{L}\p{N}]+/gu) || [];
  return words.slice(0, 2).map((word) => word[0].toUpperCase()).join("") || "?";
}

function wrapWords(text, width, maxLines) {
  const lines = [];
  for (const word of text.split(/\s+/)) {
    const last = lines.length - 1;
    if (last >= 0 && (lines[last] + " " + word).length <= width) lines[last] += " " + word;
    else lines.push(word);
  }
  if (lines.length > maxLines) {
    lines.length = maxLines;
    lines[maxLines - 1] = lines[maxLines - 1].slice(0, width - 1) + "…";
  }
  return lines;
}

// A poster placeholder drawn from the title: flat colours from its hash (cheap to render and to screenshot),
// the initials, and (unless compact, for thumbnails) the title and the year.
function poster(title, year, { compact = false } = {}) {
  const hash = hashString(title);
  const hue = hash % 360;
  const image = svg("svg", { viewBox: "0 0 200 300", class: "poster", role: "img", "aria-label": `${title} poster` });
  image.append(
    svg("rect", { width: "200", height: "300", fill: `hsl(${hue} 55% 45%)` }),
    svg("circle", { cx: "160", cy: "60", r: `${45 + (hash % 40)}`, fill: `hsl(${hue} 55% 51%)` }),
    svg("rect", { y: "185", width: "200", height: "115", fill: `hsl(${(hue + 20) % 360} 50% 22%)` }),
    svg("text", { x: "100", y: "150", class: "poster-initials", "text-anchor": "middle" }, initials(title)),
  );
  if (compact) return image;
  wrapWords(title, 18, 3).forEach((line, i) => {
    image.append(svg("text", { x: "100", y: `${220 + i * 20}`, class: "poster-title", "text-anchor": "middle" }, line));
  });
  if (year) image.append(svg("text", { x: "100", y: "288", class: "poster-year", "text-anchor": "middle" }, String(year)));
  return image;
}

function movieHref(movieId, userId) {
  return userId ? `/movies/${movieId}?user=${encodeURIComponent(userId)}` : `/movies/${movieId}`;
}

function metaLine(item) {
  return [item.release_year, item.genres.join(", ")].filter(Boolean).join(" · ") || "year and genres unknown";
}

// A recommended, similar or popular movie: poster, title, year and genres; for recommendations also why
// (reason) and how well it matches (0-100%, the raw score in the tooltip); a rating form when onRate is given
// (called with the movie, the rating and the card).
function movieCard(item, { userId = null, onRate = null } = {}) {
  const href = movieHref(item.movie_id, userId);
  const card = el(
    "article",
    { class: "card", "data-movie-id": item.movie_id },
    el("a", { href, class: "poster-link", tabindex: "-1" }, poster(item.title, item.release_year)),
    el("h3", {}, el("a", { href }, item.title)),
    el("p", { class: "meta" }, metaLine(item)),
  );
  if (item.reason && item.reason.kind !== "similar_to") {
    card.append(el("p", { class: `reason reason-${item.reason.kind}` }, item.reason.text));
  }
  if (item.channel) {
    const badges = el(
      "p",
      { class: "badges" },
      el("span", { class: `badge channel-${item.channel}`, title: "recall channel" }, item.channel),
    );
    if (item.match) {
      badges.append(el("span", { class: "match", title: `ranking score ${item.score.toFixed(3)}` }, `${Math.round(item.match * 100)}% match`));
    }
    card.append(badges);
  }
  if (onRate) card.append(ratingForm(item.title, (rating) => onRate(item, rating, card)));
  return card;
}

const RATINGS = [5, 4.5, 4, 3.5, 3, 2.5, 2, 1.5, 1, 0.5];

// Half-star ratings as the API takes them (0.5..5): a labelled select and a button, usable by keyboard.
function ratingForm(title, onRate, current = null) {
  const select = el(
    "select",
    { name: "rating", "aria-label": `Your rating of ${title}` },
    el("option", { value: "", disabled: "", selected: current === null ? "" : null }, "Rate…"),
    ...RATINGS.map((value) =>
      el("option", { value: String(value), selected: value === current ? "" : null }, `${starText(value)} ${value}`),
    ),
  );
  const form = el("form", { class: "rate" }, select, el("button", { type: "submit" }, "Rate"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!select.value) return select.focus();
    onRate(Number(select.value));
  });
  return form;
}

function setBusy(container, busy) {
  container.classList.toggle("pending", busy);
  container.querySelectorAll("button, select").forEach((control) => (control.disabled = busy));
}

// The gateway accepts ratings only for the signed-in user (a SameSite session cookie): sign in as the page's
// user once (open sign-in: the demo has no accounts).
let session = null;
function signIn(userId) {
  session ??= api("/api/session", { method: "POST", body: JSON.stringify({ user_id: Number(userId) }) }).catch(
    (err) => {
      session = null;
      throw err;
    },
  );
  return session;
}

// requestId: the recommendations answer the rated movie came from (experiment attribution), when there is one.
async function sendRating(userId, movieId, rating, requestId = null) {
  await signIn(userId);
  const body = { user_id: Number(userId), movie_id: movieId, rating };
  if (requestId) body.request_id = requestId;
  await api("/api/feedback", { method: "POST", body: JSON.stringify(body) });
}

function starText(rating) {
  return "★".repeat(Math.floor(rating)) + (rating % 1 ? "½" : "");
}

// "Your ratings"-style list rows: a thumbnail, the title, year and genres, the stars and the date.
function ratedRow(entry, userId) {
  const href = movieHref(entry.movie.movie_id, userId);
  return el(
    "li",
    { "data-movie-id": entry.movie.movie_id },
    el("a", { href, tabindex: "-1" }, poster(entry.movie.title, null, { compact: true })),
    el(
      "div",
      {},
      el("a", { href, class: "title" }, entry.movie.title),
      el("p", { class: "meta" }, metaLine(entry.movie)),
      el(
        "p",
        { class: "stars", title: `${entry.rating} of 5` },
        starText(entry.rating),
        el("span", { class: "when" }, ` ${entry.rating} · ${new Date(entry.time_unix_ms).toLocaleDateString()}`),
      ),
    ),
  );
}

// Header and home-page forms: <form data-go="/users/"> goes to /users/<typed id>.
for (const form of document.querySelectorAll("form[data-go]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = new FormData(form).get("id").trim();
    window.location.assign(form.dataset.go + encodeURIComponent(id));
  });
}
