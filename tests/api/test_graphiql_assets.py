"""GraphiQL's files: the committed bundles are the pinned npm packages', and the service
serves the page and every file it names itself (the browser test: tests/demo/)."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser

import aiohttp

from inventory_graphql.api.graphiql import ASSETS, STATIC_PATH
from tests.support.paths import ROOT

VENDOR = ASSETS / "vendor"
LOCK = ROOT / "scripts" / "graphiql-assets" / "package-lock.json"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def manifest() -> dict:
    return json.loads((VENDOR / "manifest.json").read_text())


def locked_versions() -> dict[str, str]:
    """Every package path in the lock (nested ones too) by name: version."""
    packages = json.loads(LOCK.read_text())["packages"]
    return {
        path.rsplit("node_modules/", 1)[1]: entry["version"]
        for path, entry in packages.items()
        if path
    }


def test_the_committed_bundles_are_the_locked_packages_files():
    locked = locked_versions()
    listed = manifest()
    for entry in listed["files"]:
        body = (VENDOR / entry["file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry["file"]
        assert locked[entry["package"]] == entry["version"], entry["package"]
        assert entry["license"] == "MIT"
        assert "Permission is hereby granted" in (VENDOR / entry["license_file"]).read_text()
    for entry in listed["bundled"]:
        assert locked[entry["package"]] == entry["version"], entry["package"]
        assert (VENDOR / entry["license_file"]).is_file()
    # Nothing in vendor/ that the manifest does not account for.
    on_disk = {path.name for path in VENDOR.iterdir() if path.is_file()}
    assert on_disk == {"manifest.json", *(entry["file"] for entry in listed["files"])}


class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.urls += [value for key in ("src", "href") if (value := named.get(key))]
        if tag == "script" and "src" not in named:
            self.inline_scripts += 1
        assert "style" not in named and not any(key.startswith("on") for key in named)


async def graphiql_page(session: aiohttp.ClientSession, url: str) -> tuple[str, dict]:
    async with session.get(f"{url}/graphql", headers={"accept": "text/html"}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        return await response.text(), dict(response.headers)


async def test_the_page_names_only_the_services_own_files(server):
    async with aiohttp.ClientSession() as session:
        page, headers = await graphiql_page(session, server.url)
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy  # no 'unsafe-inline', no 'unsafe-eval'
    assert "connect-src 'self';" in policy
    assert re.search(r"https?://", page) is None, "the page names another origin"
    parser = References()
    parser.feed(page)
    assert parser.inline_scripts == 0
    assert len(parser.urls) == 9  # 3 stylesheets, 5 scripts, the icon
    assert all(url.startswith(f"{STATIC_PATH}/") for url in parser.urls), parser.urls


async def test_every_file_the_page_names_is_served_and_cached_by_digest(server):
    async with aiohttp.ClientSession() as session:
        page, _ = await graphiql_page(session, server.url)
        parser = References()
        parser.feed(page)
        for url in parser.urls:
            path, _, version = url.partition("?v=")
            local = ASSETS / path.removeprefix(f"{STATIC_PATH}/")
            async with session.get(f"{server.url}{url}") as response:
                assert response.status == 200, url
                assert response.content_type == TYPES[local.suffix], url
                assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                body = await response.read()
            assert body == local.read_bytes(), url
            assert hashlib.sha256(body).hexdigest().startswith(version), url
        # Asked for without a digest, a file may change under the same URL: not immutable.
        async with session.get(f"{server.url}{STATIC_PATH}/graphiql-init.js") as response:
            assert response.status == 200
            assert "immutable" not in response.headers.get("Cache-Control", "")
