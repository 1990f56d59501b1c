"""Serves the dashboard's static files at ``/ojs/admin/``.

The files are read once, at startup, into a table keyed by their path under ``static/``: a
request can only name one of those keys, so no path it sends reaches the file system (no
traversal, no symlinks followed at request time). The pages hold no data of their own; every
figure comes from the admin API, which the app guards with the API key as usual.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from runtime.api.routing import Request, Response, Router
from runtime.api.services import Services
from runtime.dashboard import STATIC_DIR
from runtime.errors import NotFound

BASE = "/ojs/admin"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
# The pages run only their own scripts and talk only to this server.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# No build step means no content-hashed names: browsers revalidate every file (a 304 costs one
# small round trip) so an upgraded server is never shown with stale scripts.
CACHE_CONTROL = b"no-cache"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: bytes
    etag: bytes


def load_files(root: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file under `root`, keyed by its relative POSIX path."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
        files[path.relative_to(root).as_posix()] = StaticFile(body, content_type, etag)
    return files


def _serve(file: StaticFile, request: Request) -> Response:
    headers = [
        (b"cache-control", CACHE_CONTROL),
        (b"etag", file.etag),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if file.content_type.startswith(b"text/html"):
        headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY))
    wanted = {tag.strip().removeprefix(b"W/") for tag in request.headers.get(b"if-none-match", b"").split(b",")}
    if file.etag in wanted or b"*" in wanted:
        return Response(304, b"", headers)
    return Response(200, file.body, [(b"content-type", file.content_type), *headers])


def register(router: Router, services: Services) -> None:
    files = load_files()

    async def index(request: Request) -> Response:
        # Relative links in the page resolve against its directory: it must be seen at `/ojs/admin/`.
        if not request.path.endswith("/"):
            return Response(308, b"", [(b"location", f"{BASE}/".encode())])
        return _serve(files[INDEX], request)

    async def asset(request: Request) -> Response:
        name = request.path.removeprefix(BASE + "/")
        found = files.get(name)
        if found is None:
            raise NotFound(f"No dashboard file at {request.path}.")
        return _serve(found, request)

    router.add("GET", BASE, index)
    # The router's parameters hold one path segment each: one route per depth of the tree.
    for depth in range(1, 4):
        router.add("GET", BASE + "".join(f"/{{p{i}}}" for i in range(depth)), asset)
