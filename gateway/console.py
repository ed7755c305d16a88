"""The development console at `/` (only with --dev): see events arrive, send test events."""

from __future__ import annotations

from importlib import resources

from aiohttp import web


def add_routes(app: web.Application) -> None:
    async def index(_: web.Request) -> web.Response:
        page = resources.files("gateway").joinpath("static", "console.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/", index)
