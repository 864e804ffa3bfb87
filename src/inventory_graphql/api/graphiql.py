"""GraphiQL from the service's own files: no CDN, so it works offline and under a strict
Content-Security-Policy.

The bundles are the ones Strawberry's page loads from unpkg (same packages and versions;
not js-cookie, see graphiql-init.js), vendored from npm by scripts/vendor-graphiql.sh into
graphiql_assets/vendor/ and shipped in the wheel. The page is Strawberry's, with its inline
script and style moved to files here so that the policy needs no 'unsafe-inline' for
scripts."""

from __future__ import annotations

import functools
import hashlib
import html
import os
from pathlib import Path
from typing import Final

from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS: Final = Path(__file__).with_name("graphiql_assets")
STATIC_PATH: Final = "/graphiql/static"

# In load order: React before GraphiQL, GraphiQL before the explorer plugin that uses it.
STYLES: Final = ("vendor/graphiql.min.css", "vendor/plugin-explorer.css", "graphiql-page.css")
SCRIPTS: Final = (
    "vendor/react.production.min.js",
    "vendor/react-dom.production.min.js",
    "vendor/graphiql.min.js",
    "vendor/plugin-explorer.umd.js",
    "graphiql-init.js",
)

# A year, for URLs that carry the file's digest (`?v=`): a new file is a new URL.
IMMUTABLE: Final = "public, max-age=31536000, immutable"


def content_security_policy() -> str:
    """Only the service's own origin; no inline or eval'd script. 'unsafe-inline' for
    styles alone: GraphiQL's dialogs (Radix, react-remove-scroll) add <style> elements.
    Its fonts are data: URIs in graphiql.min.css. 'self' also allows ws:/wss: to the same
    host and port (CSP Level 3): the subscriptions' WebSocket."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


@functools.cache
def _digest(name: str) -> str:
    return hashlib.sha256((ASSETS / name).read_bytes()).hexdigest()[:16]


def _url(name: str) -> str:
    return html.escape(f"{STATIC_PATH}/{name}?v={_digest(name)}")


@functools.cache
def page_html() -> str:
    """The page: no inline script or style, nothing from another origin."""
    styles = "\n".join(f'    <link rel="stylesheet" href="{_url(name)}" />' for name in STYLES)
    scripts = "\n".join(f'    <script src="{_url(name)}"></script>' for name in SCRIPTS)
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>GraphiQL · inventory-graphql</title>
    <link rel="icon" href="{_url("favicon.svg")}" type="image/svg+xml" />
{styles}
  </head>
  <body>
    <div id="graphiql" class="graphiql-container">Loading...</div>
{scripts}
  </body>
</html>
"""


def page_response() -> Response:
    return HTMLResponse(
        page_html(),
        headers={
            "Content-Security-Policy": content_security_policy(),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


class GraphiQLFiles(StaticFiles):
    """graphiql_assets/ at STATIC_PATH; cached for a year when asked for by digest."""

    def __init__(self) -> None:
        super().__init__(directory=ASSETS)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if scope.get("query_string", b"").startswith(b"v="):
            response.headers["Cache-Control"] = IMMUTABLE
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
