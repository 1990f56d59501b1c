"""Browser tests of the dashboard: a real `ojs-server` on the test Redis, real data seeded through
the HTTP data plane, and Debian's Chromium driven by Playwright (never a downloaded browser).

Without Chromium or Playwright they skip locally and fail under ``CI=true``. Every page a test
opens is watched: a console error, a request that fails, or an API reply of 4xx/5xx fails the
test unless the test names it as expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.browser.seed import ADMIN_KEY, READ_KEY, Seeded, seed
from tests.conftest import RedisServer, skip_or_fail
from tests.fixtures.broker_process import BrokerProcess, serving

CHROMIUM = Path(os.environ.get("OJS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVER_ENV = {
    "OJS_API_KEY": ADMIN_KEY,
    "OJS_API_READ_KEYS": READ_KEY,
    "OJS_MAX_BODY_BYTES": str(3 * 1024 * 1024),  # room for the seeded 1 MiB result
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (a new context per test keeps them apart). Not per
    session: Playwright's sync API keeps an event loop running in this thread while it is open,
    and every later test that runs one of its own (asyncio.run) would fail."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def module_server(redis_server: RedisServer, _test_db_numbers: Iterator[int],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One server per test module, on a Redis DB of its own: starting one per test would cost
    most of these tests' time."""
    with serving(redis_server.url_for_db(next(_test_db_numbers)), tmp_path_factory.mktemp("server"),
                 env=SERVER_ENV) as running:
        yield running


@pytest.fixture
def server(module_server: BrokerProcess) -> BrokerProcess:
    """The module's server with its Redis emptied: a fresh start for this test, since the server
    keeps no state outside Redis (its scripts survive FLUSHDB)."""
    client = redis.Redis.from_url(module_server.redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return module_server


@pytest.fixture
def db(server: BrokerProcess) -> Iterator[redis.Redis]:
    """The server's Redis, to check what a click did."""
    client = redis.Redis.from_url(server.redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def seeded(server: BrokerProcess) -> Seeded:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as client:
        return seed(client)


@pytest.fixture
def api(server: BrokerProcess) -> Iterator[httpx.Client]:
    """The admin API as the tests check it after a click."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as client:
        yield client


@dataclass
class Watch:
    """What went wrong on a page: console errors, failed requests, error replies."""

    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def note(self, problem: str) -> None:
        if not any(p.search(problem) for p in self.allowed):
            self.problems.append(problem)


@dataclass
class Dashboard:
    page: Any
    base: str
    watch: Watch
    shots: Path

    def open(self, route: str) -> None:
        """Shows `route` (`#/jobs?...`) and waits until its page has rendered its data."""
        name = route.removeprefix("#/").split("?")[0].split("/")[0] or "overview"
        if self.page.url.startswith(self.base):
            self.page.evaluate("route => { location.hash = route; }", route)
        else:
            self.page.goto(self.base + route)
        self.ready(name)

    def ready(self, name: str) -> None:
        """Until the view has rendered the route now in the address bar, as page `name` (the
        old view of a route just left never passes: hashchange comes a moment after the hash)."""
        self.page.wait_for_function(
            """name => {
                const view = document.getElementById("view");
                return view && view.dataset.route === location.hash && view.dataset.page === name
                    && view.dataset.ready === "true";
            }""",
            arg=name,
        )

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def confirm(self) -> None:
        self.page.locator("dialog.dialog[open] button.confirm").click()


@pytest.fixture
def open_dashboard(browser: Any, server: BrokerProcess, tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    """`open_dashboard(key=ADMIN_KEY)`: a fresh browser context on this test's server, the key
    already in its session storage (None: the page has to ask for it)."""
    shots = tmp_path / "screenshots"
    contexts: list[Any] = []
    watches: list[Watch] = []

    def go(key: str | None = ADMIN_KEY) -> Dashboard:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        contexts.append(context)
        if key is not None:
            context.add_init_script(f"sessionStorage.setItem('ojs.admin.key', {key!r});")
        page = context.new_page()
        watch = Watch()
        watches.append(watch)
        page.on("console", lambda msg: msg.type == "error" and watch.note(f"console error: {msg.text}"))
        page.on("pageerror", lambda err: watch.note(f"page error: {err}"))
        page.on("requestfailed", lambda req: watch.note(f"request failed: {req.method} {req.url} {req.failure}"))
        page.on("response", lambda res: res.status >= 400 and watch.note(f"HTTP {res.status}: {res.request.method} {res.url}"))
        return Dashboard(page=page, base=f"{server.url}/ojs/admin/", watch=watch, shots=shots)

    yield go
    found = [problem for watch in watches for problem in watch.problems]
    for context in contexts:
        context.close()
    assert not found, "the dashboard had problems:\n" + "\n".join(found)
