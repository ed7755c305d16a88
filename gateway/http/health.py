"""Liveness, readiness and metrics endpoints, as Kubernetes and Prometheus read them: the same
for a replica and the bridge (`publisher.opsurface`)."""

from publisher.opsurface import routes

__all__ = ["routes"]
