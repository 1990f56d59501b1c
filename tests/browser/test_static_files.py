"""The dashboard's files as the HTTP endpoint serves them: types, caching, the redirect, the key
not needed for them, and nothing outside the static tree reachable."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from runtime.api import dashboard
from tests.fixtures.broker_process import BrokerProcess


@pytest.fixture
def plain_server(module_server: BrokerProcess) -> BrokerProcess:
    """The module's server: these checks only read files, so no Redis reset or seeding."""
    return module_server


def test_every_file_is_served_with_its_type_and_revalidation(plain_server: BrokerProcess) -> None:
    files = dashboard.load_files()
    assert {"index.html", "css/app.css", "js/app.js", "js/pages/jobs.js"} <= set(files)
    types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
    with httpx.Client(base_url=plain_server.url) as client:  # no key: the files hold no data
        for name, file in files.items():
            reply = client.get(f"/ojs/admin/{name}")
            assert reply.status_code == 200, name
            assert reply.headers["content-type"].startswith(types[Path(name).suffix]), name
            assert reply.headers["cache-control"] == "no-cache"
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.content == file.body
            again = client.get(f"/ojs/admin/{name}", headers={"If-None-Match": reply.headers["etag"]})
            assert again.status_code == 304 and again.content == b""


def test_the_page_is_at_the_directory_url(plain_server: BrokerProcess) -> None:
    with httpx.Client(base_url=plain_server.url) as client:
        bare = client.get("/ojs/admin")
        assert bare.status_code == 308 and bare.headers["location"] == "/ojs/admin/"
        page = client.get("/ojs/admin/")
        assert page.status_code == 200 and b'<script type="module" src="js/app.js">' in page.content
        assert "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("path", [
    "/ojs/admin/../pyproject.toml", "/ojs/admin/%2e%2e/%2e%2e/pyproject.toml", "/ojs/admin/js/../../__init__.py",
    "/ojs/admin/..%2f..%2fapi%2fdashboard.py", "/ojs/admin/js/", "/ojs/admin/nope.js", "/ojs/admin//etc/passwd",
])
def test_nothing_outside_the_static_files(plain_server: BrokerProcess, path: str) -> None:
    # http.client sends the path as written (an HTTP library would resolve the dots first).
    where = urlsplit(plain_server.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    assert reply.status == 404, (path, reply.status, body[:200])
    assert json.loads(body)["error"]["code"] == "not_found"


def test_the_api_still_wants_the_key(plain_server: BrokerProcess) -> None:
    with httpx.Client(base_url=plain_server.url) as client:
        assert client.get("/ojs/v1/queues").status_code == 401
        assert client.get("/ojs/adminx").status_code == 401


def test_the_package_data_ships_every_static_file() -> None:
    """An installed package (not this checkout) holds only what package-data names."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["runtime.dashboard"]
    static = root / "runtime" / "dashboard"
    files = [p.relative_to(static).as_posix() for p in (static / "static").rglob("*") if p.is_file()]
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatchcase(f, pattern) and f.count("/") == pattern.count("/")
                                              for pattern in patterns)]
    assert unshipped == []
