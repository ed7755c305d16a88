# syntax=docker/dockerfile:1
# The gateway image: `docker build -t notification-gateway .`
# Two stages: the build stage installs the project into a venv; the runtime stage copies only
# that venv, so no compiler, pip cache or source tree ships. Every dependency has a manylinux
# wheel for CPython 3.11 (orjson, hiredis, uvloop, cryptography), so slim needs no toolchain.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# .dockerignore is an allow-list: only pyproject.toml, requirements.lock, README.md, gateway/ and
# publisher/ arrive.
COPY . .
# Exactly the versions of requirements.lock, hashes checked (scripts/lock writes it from
# pyproject.toml); then the project itself, without resolving any dependency at build time.
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock \
    && pip install --no-cache-dir --no-deps . \
    && pip check \
    && python -m compileall -q /opt/venv/lib

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="notification-gateway" \
      org.opencontainers.image.description="Socket.IO notification gateway; replicas share rooms through Redis" \
      org.opencontainers.image.licenses="MIT"
# A numeric, non-root user: Kubernetes can only verify runAsNonRoot against a numeric USER.
# deploy/k8s/deployment.yaml runs as the same 10001:10001.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# SIGTERM starts the drain: readiness 503, clients let go over DRAIN_SECONDS, then exit.
# Give the container more than DRAIN_SECONDS to stop (compose stop_grace_period, k8s
# terminationGracePeriodSeconds), or the runtime's SIGKILL cuts the drain short.
STOPSIGNAL SIGTERM
# Liveness only (/healthz); readiness (/readyz: Redis connected, not draining) is the load
# balancer's business. No curl in slim: Python's urllib raises, so exits non-zero, on non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# No ulimit wrapper: the gateway raises its soft open-files limit to the hard one itself at
# start (one descriptor per socket); the hard limit is the runtime's (compose `ulimits`).
CMD ["gateway"]
