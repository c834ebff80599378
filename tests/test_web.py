"""The web gateway and its pages.

Without the stack: the gateway process itself (`python -m services.web.server`) answers malformed input with
400s, an unreachable backend with 503, logs JSON and drains on SIGTERM.

With the stack (`starling up` starts the gateway after recommend), headless Chromium driven over the Chrome
DevTools Protocol: the user page lists recommendations, a click on a rating button records feedback and the
lists change; the movie page shows details and similar movies; API errors show on the page. Plain HTTP for
the JSON API's error mapping. The pages' screenshots go to docs/ with STARLING_UPDATE_DOCS=1 (`make docs-figures`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from websockets.sync.client import ClientConnection, connect

from starling.config import REPO_ROOT, Settings

SCREENSHOT = "screenshot-user-page.png"
SAMPLE_USER = 1
MAX_SCREENSHOT_BYTES = 450_000  # the README's pictures stay small in the repository


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Polls ``check`` until it returns something truthy; fails with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


# --- the gateway process on its own --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_gateway(free_port: Callable[[], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The gateway process in front of a port where nothing listens."""
    port, dead_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("web") / "web.log"
    env = {
        **os.environ,
        "STARLING_WEB_PORT": str(port),
        "STARLING_WEB_RECOMMEND_TARGET": f"127.0.0.1:{dead_port}",
        "STARLING_WEB_TIMEOUT_S": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.web.server"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base) or process.poll() is not None, 30, "the gateway to start")
        assert process.poll() is None, log_path.read_text()
        yield base, process, log_path, dead_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


FEEDBACK = {"user_id": 1, "movie_id": 1, "rating": 4}
AN_ID = f"an integer from 0 to {2**63 - 1}"  # what every id must be, as the gateway says it


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/api/users/abc/recommendations", None, f"user id must be {AN_ID}, got 'abc'"),
        ("GET", "/api/users/-3/ratings", None, f"user id must be {AN_ID}, got '-3'"),
        (
            "GET",
            f"/api/users/{2**63}/ratings",
            None,
            f"user id must be {AN_ID}, got '{2**63}'",
        ),
        ("GET", "/api/movies/1.5", None, f"movie id must be {AN_ID}, got '1.5'"),
        ("GET", "/api/movies/x/similar", None, f"movie id must be {AN_ID}, got 'x'"),
        (
            "GET",
            "/api/users/1/recommendations?k=ten",
            None,
            "query parameter k must be an integer, got 'ten'",
        ),
        ("GET", "/api/users/1/recommendations?exclude=a", None, f"exclude must be {AN_ID}"),
        ("GET", "/api/users/1/ratings?limit=", None, "query parameter limit must be an integer, got ''"),
        ("POST", "/api/feedback", b"{not json", "request body is not valid JSON"),
        ("POST", "/api/feedback", [1, 2], "request body must be a JSON object, got list"),
        ("POST", "/api/feedback", {**FEEDBACK, "rating": 7}, "rating must be a number from 0.5 to 5"),
        ("POST", "/api/feedback", {**FEEDBACK, "rating": 0}, "in steps of 0.5, got 0"),
        ("POST", "/api/feedback", {**FEEDBACK, "rating": 3.3}, "in steps of 0.5, got 3.3"),
        ("POST", "/api/feedback", {**FEEDBACK, "rating": "5"}, 'in steps of 0.5, got "5"'),
        ("POST", "/api/feedback", {**FEEDBACK, "rating": True}, "in steps of 0.5, got true"),
        ("POST", "/api/feedback", {"user_id": 1, "movie_id": 1}, "in steps of 0.5, got null"),
        (
            "POST",
            "/api/feedback",
            {"user_id": 1, "rating": 4},
            f"movie_id must be {AN_ID}, got null",
        ),
        (
            "POST",
            "/api/feedback",
            {**FEEDBACK, "user_id": -1},
            f"user_id must be {AN_ID}, got -1",
        ),
        (
            "POST",
            "/api/feedback",
            {**FEEDBACK, "user_id": "1"},
            f'user_id must be {AN_ID}, got "1"',
        ),
        (
            "POST",
            "/api/feedback",
            {**FEEDBACK, "kind": "like"},
            "kind must be one of ['click', 'rating', 'watch']",
        ),
        ("POST", "/api/feedback", {**FEEDBACK, "kind": "click"}, "rating is only for kind 'rating'"),
        ("POST", "/api/feedback", {**FEEDBACK, "stars": 4}, "unknown fields ['stars']"),
        ("POST", "/api/feedback", {**FEEDBACK, "request_id": 7}, "request_id must be a string, got 7"),
        ("POST", "/api/feedback", b"[" * 100_000 + b"]" * 100_000, "request body is not valid JSON"),
        ("POST", "/api/session", {"user_id": "me"}, f'user_id must be {AN_ID}, got "me"'),
        ("POST", "/api/session", {"user": 1}, 'request body must be {"user_id": <id>}'),
    ],
)
def test_malformed_input_is_400_before_any_backend_call(lone_gateway, method, path, body, message) -> None:
    base = lone_gateway[0]
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    response = httpx.request(method, base + path, content=content, headers=headers, timeout=5)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_REQUEST"
    assert message in response.json()["error"]


def test_writes_need_a_same_site_json_request_and_the_sessions_own_user(lone_gateway) -> None:
    base = lone_gateway[0]
    rating = {"user_id": 1, "movie_id": 1, "rating": 4}

    def post(path: str, client: httpx.Client | None = None, **kwargs) -> httpx.Response:
        return (client or httpx).post(base + path, timeout=5, **kwargs)

    refused = [
        (post("/api/feedback", content=json.dumps(rating), headers={"Content-Type": "text/plain"}), 415),
        (post("/api/feedback", data={"user_id": "1", "movie_id": "1", "rating": "4"}), 415),
        (post("/api/feedback", json=rating, headers={"Origin": "https://evil.example"}), 403),
        (post("/api/session", json={"user_id": 1}, headers={"Origin": "https://evil.example"}), 403),
        (post("/api/feedback", json=rating, headers={"Sec-Fetch-Site": "cross-site"}), 403),
        (post("/api/feedback", json=rating), 401),
        (post("/api/feedback", json=rating, cookies={"starling_session": "1.99999999999.forged"}), 401),
        (post("/api/feedback", json=rating, headers={"Authorization": "Bearer stk_unknown"}), 401),
    ]
    for response, status in refused:
        assert response.status_code == status, response.text
    assert [r.json()["code"] for r, _ in refused] == [
        "UNSUPPORTED_MEDIA_TYPE", "UNSUPPORTED_MEDIA_TYPE", "CROSS_ORIGIN", "CROSS_ORIGIN", "CROSS_ORIGIN",
        "SIGN_IN_REQUIRED", "SIGN_IN_REQUIRED", "UNAUTHENTICATED",
    ]  # fmt: skip

    with httpx.Client() as browser:
        signed_in = post("/api/session", browser, json={"user_id": 2}, headers={"Origin": base})
        assert signed_in.status_code == 200, signed_in.text
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        other_user = post("/api/feedback", browser, json=rating)
        assert other_user.status_code == 403 and other_user.json()["code"] == "WRONG_USER"
        own_user = post("/api/feedback", browser, json={**rating, "user_id": 2})
        assert own_user.status_code == 503, own_user.text  # accepted by the gateway; the backend is down


def test_every_answer_carries_security_headers(lone_gateway) -> None:
    base = lone_gateway[0]
    for path in ("/", "/users/1", "/static/common.js", "/api/movies/x", "/nope"):
        headers = httpx.get(base + path, timeout=5).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path


def test_unreachable_backend_is_503_and_pages_still_load(lone_gateway) -> None:
    base, _, _, dead_port = lone_gateway
    response = httpx.get(f"{base}/api/users/1/recommendations", timeout=5)
    assert response.status_code == 503
    assert response.json()["code"] == "UNAVAILABLE"
    assert f"127.0.0.1:{dead_port}" in response.json()["error"]
    page = httpx.get(f"{base}/users/1", timeout=5)
    assert page.status_code == 200 and "Recommended for you" in page.text
    missing = httpx.get(f"{base}/api/nothing/here", timeout=5)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    assert (
        'starling_http_responses_total{route="/api/users/{user_id}/recommendations",status="503"}' in metrics
    )


def test_json_logs_and_graceful_stop_on_sigterm(lone_gateway) -> None:
    """Runs last among the lone-gateway tests: it stops the process."""
    _, process, log_path, _ = lone_gateway
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    messages = [json.loads(line)["message"] for line in log_path.read_text().splitlines()]
    assert messages[0] == "serving" and messages[-2:] == ["draining", "stopped"], messages


# --- the real stack and a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(ml_small_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    from conftest import copy_workdir, running_stack

    workdir = copy_workdir(ml_small_trained, tmp_path_factory.mktemp("web_stack"))
    with running_stack(workdir, web_timeout_s=15) as settings:
        yield settings, f"http://127.0.0.1:{settings.web_port}"


class DevTools:
    """Just enough of the Chrome DevTools Protocol: commands on one page target over its websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.next_id = 0
        self.exceptions: list[str] = []

    def send(self, method: str, timeout_s: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(message["params"]["exceptionDetails"])[:500])
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, timeout_s: float = 30) -> str:
        """Navigates and waits until the page's script says ready or error; returns that state."""
        self.evaluate("document.body && (document.body.dataset.state = 'left')")
        self.send("Page.navigate", url=url)
        return wait_until(
            lambda: self.evaluate(
                "['ready', 'error'].includes(document.body?.dataset.state) && document.body.dataset.state"
            ),
            timeout_s,
            f"{url} to load",
        )

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        x, y = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str, code: int, text: str = "") -> None:
        """A real key press (down, with the character it types if any, and up) on whatever has the focus."""
        down = {"type": "keyDown", "text": text} if text else {"type": "rawKeyDown"}
        for event in (down, {"type": "keyUp"}):
            self.send("Input.dispatchKeyEvent", key=key, code=key, windowsVirtualKeyCode=code, **event)

    def screenshot(self, width: int = 1280) -> bytes:
        """The whole page as PNG, at ``width`` CSS pixels."""
        self.evaluate("window.scrollTo(0, 0)")
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        try:
            return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        finally:
            self.send("Emulation.clearDeviceMetricsOverride")


def chromium_binary() -> str:
    """Debian's chromium, installed with apt-get when missing (the test machines run as root)."""
    found = shutil.which("chromium")
    if found:
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=True)
        subprocess.run(install, capture_output=True, check=True)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


@contextmanager
def headless_chromium(profile: Path) -> Iterator[DevTools]:
    """Chromium with a fresh profile in ``profile``, and DevTools on its first page."""
    process = subprocess.Popen(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(profile / "chromium.log").open("wb"),
    )
    active_port = profile / "DevToolsActivePort"
    try:
        wait_until(lambda: active_port.is_file() and active_port.read_text().strip(), 60, "Chromium to start")
        port = active_port.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30) as socket:
            devtools = DevTools(socket)
            devtools.send("Runtime.enable")
            devtools.send("Page.enable")
            yield devtools
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as devtools:
        yield devtools


RECOMMENDED_CARDS = """[...document.querySelectorAll('#recommendations .card')].map(card => ({
    movie_id: Number(card.dataset.movieId),
    title: card.querySelector('h3').textContent,
    channel: card.querySelector('.badge').textContent,
    has_poster: card.querySelector('svg.poster text') !== null,
    rating_choices: [...card.querySelectorAll('.rate select option:not([disabled])')].map(o => Number(o.value)),
    reason: card.querySelector('.reason')?.textContent ?? null,
    match: card.querySelector('.match')?.textContent ?? null,
}))"""
RATED_IDS = "[...document.querySelectorAll('#rated li[data-movie-id]')].map(li => Number(li.dataset.movieId))"
REMOTE_RESOURCES = (
    "performance.getEntriesByType('resource').map(e => e.name).filter(u => !u.startsWith(location.origin))"
)


@pytest.mark.slow
def test_rating_on_the_user_page_changes_both_lists(stack, browser: DevTools, docs_dir: Path) -> None:
    settings, base = stack
    assert browser.open(f"{base}/users/{SAMPLE_USER}") == "ready"
    cards = browser.evaluate(RECOMMENDED_CARDS)
    api = httpx.get(f"{base}/api/users/{SAMPLE_USER}/recommendations?k=12", timeout=30).json()
    assert [c["movie_id"] for c in cards] == [item["movie_id"] for item in api["items"]]
    assert [c["title"] for c in cards] == [item["title"] for item in api["items"]]
    half_stars = [5 - 0.5 * i for i in range(10)]
    assert all(c["has_poster"] and c["rating_choices"] == half_stars and c["channel"] for c in cards)
    assert [c["reason"] for c in cards] == [item["reason"]["text"] for item in api["items"]]
    assert [c["match"] for c in cards] == [f"{round(item['match'] * 100)}% match" for item in api["items"]]
    assert any(c["reason"].startswith("Because you liked ") for c in cards)
    rated_before = browser.evaluate(RATED_IDS)
    history = pl.read_parquet(settings.workdir / "ratings.parquet").filter(pl.col("user_id") == SAMPLE_USER)
    rated_at = dict(zip(history["movie_id"], history["event_timestamp"], strict=True))
    most_recent = history["event_timestamp"].sort(descending=True).head(len(rated_before)).to_list()
    assert (
        len(rated_before) == min(history.height, 12) and [rated_at[m] for m in rated_before] == most_recent
    ), "the rated list shows the user's most recent ratings first"

    target = cards[0]
    card = f'#recommendations .card[data-movie-id="{target["movie_id"]}"]'
    browser.evaluate(f"document.querySelector('{card} select').value = '4.5'")  # a half star
    browser.click(f"{card} .rate button")
    wait_until(
        lambda: (
            browser.evaluate("document.body.dataset.state") == "ready"
            and target["movie_id"] not in [c["movie_id"] for c in browser.evaluate(RECOMMENDED_CARDS)]
            and browser.evaluate(RATED_IDS)[:1] == [target["movie_id"]]
        ),
        20,
        f"movie {target['movie_id']} to move from the recommendations to the rated list",
    )
    assert browser.evaluate("document.querySelector('#rated li .stars').textContent").startswith("★★★★½ 4.5")
    assert (
        browser.evaluate("document.getElementById('status').textContent") == f"Rated {target['title']}: 4.5 ★"
    )
    ratings = httpx.get(f"{base}/api/users/{SAMPLE_USER}/ratings?limit=1", timeout=30).json()["ratings"]
    assert ratings[0]["movie"]["movie_id"] == target["movie_id"] and ratings[0]["rating"] == 4.5
    from starling.events import RATING_STREAM, read_all

    logged = read_all(settings.workdir, RATING_STREAM).filter(
        (pl.col("user_id") == SAMPLE_USER) & (pl.col("movie_id") == target["movie_id"])
    )
    assert logged["request_id"].to_list()[-1], "the rating names the recommendations it came from"
    assert browser.evaluate(REMOTE_RESOURCES) == [] and browser.exceptions == []

    png = browser.screenshot()
    (docs_dir / SCREENSHOT).write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) < MAX_SCREENSHOT_BYTES, (
        f"{len(png)} bytes: {docs_dir / SCREENSHOT}"
    )


@pytest.mark.slow
def test_your_ratings_are_paged(stack, browser: DevTools) -> None:
    _, base = stack
    total = httpx.get(f"{base}/api/users/{SAMPLE_USER}/ratings?limit=1", timeout=30).json()["total"]
    assert total > 24, "the sample user has more than two pages of ratings"
    assert browser.open(f"{base}/users/{SAMPLE_USER}") == "ready"
    assert browser.evaluate("document.getElementById('rated-count').textContent") == f"12 of {total}"
    first_page = browser.evaluate(RATED_IDS)
    browser.click("#rated-more")
    wait_until(lambda: len(browser.evaluate(RATED_IDS)) == 24, 20, "the second page of ratings")
    assert browser.evaluate("document.getElementById('rated-count').textContent") == f"24 of {total}"
    page_2 = httpx.get(f"{base}/api/users/{SAMPLE_USER}/ratings?limit=12&offset=12", timeout=30).json()
    assert browser.evaluate(RATED_IDS) == first_page + [r["movie"]["movie_id"] for r in page_2["ratings"]]
    assert page_2["total"] == total and page_2["offset"] == 12
    assert browser.exceptions == []


@pytest.mark.slow
def test_rating_from_the_movie_page(stack, browser: DevTools, docs_dir: Path) -> None:
    _, base = stack
    user = 2
    rated = {
        r["movie"]["movie_id"]
        for r in httpx.get(f"{base}/api/users/{user}/ratings?limit=500", timeout=30).json()["ratings"]
    }
    movie_id = next(m for m in (1, 2, 3, 5, 6, 7, 10) if m not in rated)
    assert browser.open(f"{base}/movies/{movie_id}?user={user}") == "ready"
    assert (
        browser.evaluate("document.getElementById('your-rating-text').textContent")
        == "You have not rated it yet."
    )
    browser.evaluate("document.querySelector('#your-rating select').value = '3.5'")
    browser.click("#your-rating .rate button")
    wait_until(
        lambda: "3.5 on" in browser.evaluate("document.getElementById('your-rating-text').textContent"),
        20,
        "the page to show the new rating",
    )
    assert browser.evaluate("document.querySelector('#your-rating select').value") == "3.5"
    mine = httpx.get(f"{base}/api/users/{user}/ratings?movie={movie_id}", timeout=30).json()
    assert mine["total"] == 1 and mine["ratings"][0]["rating"] == 3.5
    assert mine["ratings"][0]["movie"]["movie_id"] == movie_id
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG") and len(png) < MAX_SCREENSHOT_BYTES
    (docs_dir / "screenshot-movie-page.png").write_bytes(png)
    assert browser.exceptions == []


@pytest.mark.slow
def test_a_rating_can_be_given_with_the_keyboard_alone(stack, browser: DevTools) -> None:
    _, base = stack
    user, movie_id = 3, 2  # user 3 has not rated Jumanji
    assert browser.open(f"{base}/movies/{movie_id}?user={user}") == "ready"
    browser.evaluate("document.querySelector('#your-rating select').focus()")
    for _ in range(3):  # 5, 4.5, 4 (the placeholder comes first)
        browser.press("ArrowDown", 40)
    assert browser.evaluate("document.querySelector('#your-rating select').value") == "4"
    browser.press("Tab", 9)
    assert browser.evaluate("document.activeElement.textContent") == "Rate"
    browser.press("Enter", 13, text="\r")
    wait_until(
        lambda: "★★★★ 4 on" in browser.evaluate("document.getElementById('your-rating-text').textContent"),
        20,
        "the keyboard rating to be saved",
    )
    mine = httpx.get(f"{base}/api/users/{user}/ratings?movie={movie_id}", timeout=30).json()
    assert mine["ratings"][0]["rating"] == 4
    labels = browser.evaluate(
        "[...document.querySelectorAll('select, input')].filter(e => !e.labels?.length && !e.getAttribute('aria-label')).length"
    )
    assert labels == 0, "every control has a label"


@pytest.mark.slow
def test_movie_page_shows_details_and_similar_movies(stack, browser: DevTools) -> None:
    settings, base = stack
    movies = pl.read_parquet(settings.workdir / "movies.parquet")
    ratings = pl.read_parquet(settings.workdir / "ratings.parquet")
    # The sample user's most-rated movie: never recommended to them, so the rating test cannot change it.
    rated_by_user = ratings.filter(pl.col("user_id") == SAMPLE_USER)["movie_id"]
    counts = ratings.filter(pl.col("movie_id").is_in(rated_by_user.implode())).group_by("movie_id").len()
    movie_id = counts.sort(["len", "movie_id"], descending=[True, False])[0, "movie_id"]
    movie = movies.filter(pl.col("movie_id") == movie_id).row(0, named=True)

    assert browser.open(f"{base}/movies/{movie_id}?user={SAMPLE_USER}") == "ready"
    assert browser.evaluate("document.getElementById('heading').textContent") == movie["title"]
    details = browser.evaluate("document.querySelector('#details dl').innerText")
    assert str(movie["release_year"]) in details and ", ".join(movie["genres"]) in details
    assert f"from {ratings.filter(pl.col('movie_id') == movie_id).height} ratings" in details
    similar = browser.evaluate(
        "[...document.querySelectorAll('#similar .card')].map(c => Number(c.dataset.movieId))"
    )
    api = httpx.get(f"{base}/api/movies/{movie_id}/similar?k=12", timeout=30).json()
    assert similar == [item["movie_id"] for item in api["items"]] and len(similar) == 12
    assert movie_id not in similar
    assert browser.evaluate("document.getElementById('back').getAttribute('href')") == f"/users/{SAMPLE_USER}"
    assert browser.evaluate("document.querySelectorAll('#similar .rate').length") == 0
    assert browser.exceptions == []


@pytest.mark.slow
def test_home_page_finds_a_movie_by_title_without_its_id(stack, browser: DevTools, docs_dir: Path) -> None:
    _, base = stack
    assert browser.open(f"{base}/") == "ready"
    browser.click("#search-query")
    browser.send("Input.insertText", text="AMÉLIE")  # case and accents do not matter
    browser.click("#search button")
    wait_until(
        lambda: browser.evaluate("document.querySelectorAll('#search-results li').length") > 0,
        30,
        "search results",
    )
    rows = browser.evaluate(
        "[...document.querySelectorAll('#popular-rows section')].map(s => ({heading: s.querySelector('h2')"
        ".textContent, ids: [...s.querySelectorAll('.card')].map(c => Number(c.dataset.movieId)),"
        " genres: [...s.querySelectorAll('.card .meta')].map(m => m.textContent)}))"
    )
    popular = httpx.get(f"{base}/api/popular?limit=8", timeout=30).json()
    assert rows[0] == {
        "heading": "Most rated",
        "ids": [m["movie_id"] for m in popular["movies"]],
        "genres": rows[0]["genres"],
    }
    genres = [g for g in popular["genres"] if not g.startswith("(")][:4]
    assert [r["heading"] for r in rows[1:]] == [f"Most rated in {g}" for g in genres]
    for row, genre in zip(rows[1:], genres, strict=True):
        assert len(row["ids"]) == 8 and all(genre in meta for meta in row["genres"])
    first = browser.evaluate("document.querySelector('#search-results li a').textContent")
    assert first.startswith("Amelie (Fabuleux destin d'Amélie Poulain")
    assert "1 of 1 movies match" in browser.evaluate("document.getElementById('search-status').textContent")
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG") and len(png) < MAX_SCREENSHOT_BYTES
    (docs_dir / "screenshot-search.png").write_bytes(png)
    reply = httpx.get(f"{base}/api/movies", params={"q": "the", "limit": 5, "offset": 5}, timeout=30).json()
    assert reply["total"] > 100 and len(reply["movies"]) == 5 and reply["offset"] == 5
    bad = httpx.get(f"{base}/api/movies", params={"q": "x", "limit": 500}, timeout=30)
    assert bad.status_code == 400 and "limit must be 1..100" in bad.json()["error"]


def test_home_page_opens_the_user_page(stack, browser: DevTools) -> None:
    _, base = stack
    assert browser.open(f"{base}/") == "ready"
    browser.click("#user-id")
    browser.send("Input.insertText", text=str(SAMPLE_USER))
    browser.click('form[data-go="/users/"] button')

    def on_user_page() -> bool:
        try:
            return browser.evaluate("location.pathname + ' ' + document.body.dataset.state") == (
                f"/users/{SAMPLE_USER} ready"
            )
        except RuntimeError:  # the old page went away during the evaluation
            return False

    wait_until(on_user_page, 30, "the user page to load")
    assert len(browser.evaluate(RECOMMENDED_CARDS)) == 12


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/users/abc", f"user id must be {AN_ID}, got 'abc'"),
        ("/movies/99999999", "movie_id 99999999 is not in the catalog"),
    ],
)
def test_pages_show_api_errors(stack, browser: DevTools, path: str, message: str) -> None:
    _, base = stack
    assert browser.open(base + path) == "error"
    assert message in browser.evaluate("document.getElementById('error').textContent")
    assert browser.exceptions == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        (
            "GET",
            "/api/users/1/recommendations?k=0",
            None,
            400,
            "INVALID_ARGUMENT",
            "k must be between 1 and 500",
        ),
        (
            "GET",
            "/api/users/1/recommendations?genre=Space+Opera",
            None,
            400,
            "INVALID_ARGUMENT",
            "unknown genre",
        ),
        (
            "GET",
            "/api/users/1/ratings?limit=501",
            None,
            400,
            "INVALID_ARGUMENT",
            "limit must be between 1 and 500",
        ),
        ("GET", "/api/movies/99999999", None, 404, "NOT_FOUND", "movie_id 99999999 is not in the catalog"),
        ("GET", "/api/movies/99999999/similar", None, 404, "NOT_FOUND", "99999999"),
        (
            "POST",
            "/api/feedback",
            {"user_id": 1, "movie_id": 99999999, "rating": 4},
            400,
            "REJECTED",
            "feedback rejected: movie_id 99999999 is not in the catalog",
        ),
    ],
)
def test_service_errors_map_to_http(stack, method, path, body, status, code, message) -> None:
    _, base = stack
    with httpx.Client() as client:
        if method == "POST":
            client.post(
                f"{base}/api/session", json={"user_id": body["user_id"]}, timeout=30
            ).raise_for_status()
        response = client.request(method, base + path, json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and message in response.json()["error"]


@pytest.mark.slow
def test_api_round_trip(stack) -> None:
    settings, base = stack
    reply = httpx.get(f"{base}/api/users/{SAMPLE_USER}/recommendations?k=5&genre=Comedy", timeout=30).json()
    assert len(reply["items"]) == 5 and reply["model_version"] and reply["degraded"] == []
    assert all("Comedy" in item["genres"] and item["title"] for item in reply["items"])
    movies = pl.read_parquet(settings.workdir / "movies.parquet")
    movie_id = int(movies["movie_id"][0])
    movie = httpx.get(f"{base}/api/movies/{movie_id}", timeout=30).json()
    expected = movies.row(0, named=True)
    assert (movie["title"], movie["release_year"], movie["genres"]) == (
        expected["title"],
        expected["release_year"],
        expected["genres"],
    )
    assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"

    # A server-side client writes for any user with an API key holding feedback:write, and only with one.
    from starling.auth import add_key, keys_file

    rating = {"user_id": SAMPLE_USER, "movie_id": movie_id, "rating": 4.5}
    writer = add_key(keys_file(settings), "backend-writer", ["feedback:write"])
    reader = add_key(keys_file(settings), "reader", ["read"])
    accepted = httpx.post(
        f"{base}/api/feedback", json=rating, headers={"Authorization": f"Bearer {writer}"}, timeout=30
    )
    assert accepted.status_code == 200 and accepted.json()["accepted"], accepted.text
    denied = httpx.post(
        f"{base}/api/feedback", json=rating, headers={"Authorization": f"Bearer {reader}"}, timeout=30
    )
    assert denied.status_code == 403 and denied.json()["code"] == "PERMISSION_DENIED"
