"""Liveness, readiness and metrics endpoints, as Kubernetes and Prometheus read them."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.metrics import Metrics


def routes(metrics: Metrics, ready: Callable[[], str | None]) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": reason}, status=503)

    async def metrics_text(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_text)]
