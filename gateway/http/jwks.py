"""JWT_JWKS_URL: the identity provider's keys, fetched in the background and cached.

The handshake never waits on the network: it verifies with the key set in force, and this task
replaces that set when a newer document arrives (`Authenticator.install_jwks`). The first fetch
happens before the replica listens (bounded by FIRST_FETCH_TIMEOUT), later ones every
JWT_JWKS_REFRESH seconds, or sooner (at most every MIN_INTERVAL) when a token names a kid that
no key has: the provider has probably just rotated. A failed fetch keeps the last good set and
is retried with a growing delay. `file://` documents are read in a thread the same way, so a
Kubernetes Secret mounted as a file rotates without a restart.

https:// is verified against the system's CAs (SSL_CERT_FILE adds a private one); plain http://
is only accepted to a loopback address (a sidecar), see `config_parsers.jwks_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp
from aiohttp import web

from gateway.config import MIN_SECRET_BYTES
from gateway.policy.auth import Authenticator
from gateway.policy.keys import MAX_JWKS_BYTES, jwks_keys, read_jwks_file
from publisher.redis_url import redact

log = logging.getLogger("gateway.jwks")

FETCH_TIMEOUT = 10.0
FIRST_FETCH_TIMEOUT = 10.0
MIN_INTERVAL = 30.0
RETRY_FIRST = 1.0


class JwksError(Exception):
    """A fetch that brought no usable document; the message is safe to log."""


class JwksRefresher:
    """Keeps an Authenticator's JWKS keys current. `ssl_context` is for tests and private CAs."""

    def __init__(self, authenticator: Authenticator, *, ssl_context: ssl.SSLContext | None = None,
                 min_interval: float = MIN_INTERVAL) -> None:
        self._auth = authenticator
        self._url = authenticator.jwks_url
        self._where = redact(self._url)
        self._is_file = self._url.startswith("file:")
        self._ssl = ssl_context
        self._min_interval = min_interval
        self._session: aiohttp.ClientSession | None = None
        self._last_problems: tuple[str, ...] = ()
        self.fetches = 0

    async def refresh(self) -> bool:
        """Fetch once and install the keys; False (logged) when the fetch or the document failed."""
        self.fetches += 1
        try:
            document = await (asyncio.to_thread(self._read_file) if self._is_file else self._fetch())
            result = jwks_keys(document, self._auth.allowed_algorithms, allow_secrets=self._is_file,
                               min_secret_bytes=MIN_SECRET_BYTES)
        except (JwksError, ValueError) as exc:
            log.warning("JWKS fetch failed; the keys in force stay", extra={"url": self._where, "why": str(exc)})
            return False
        if result.problems != self._last_problems:
            self._last_problems = result.problems
            for problem in result.problems:
                log.warning("JWKS key left out", extra={"url": self._where, "why": problem})
        if not result.keys:
            log.warning("JWKS document holds no usable key; the keys in force stay", extra={"url": self._where})
            return False
        self._auth.install_jwks(result.keys)
        log.info("JWKS keys in force", extra={"url": self._where, "keys": self._auth.key_labels})
        return True

    def _read_file(self) -> bytes:
        path = Path(unquote(urlparse(self._url).path))
        try:
            return read_jwks_file(path)
        except OSError as exc:
            raise JwksError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise JwksError(str(exc)) from None

    async def _fetch(self) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        try:
            async with self._session.get(self._url, ssl=self._ssl if self._ssl is not None else True,
                                         allow_redirects=False,
                                         headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise JwksError(f"HTTP {resp.status}")
                document = await resp.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"{type(exc).__name__}: {redact(str(exc)) if '://' in str(exc) else exc}") from None
        if len(document) > MAX_JWKS_BYTES:
            raise JwksError(f"the document is over {MAX_JWKS_BYTES} bytes")
        return document

    async def run(self) -> None:
        """Refresh forever: every JWT_JWKS_REFRESH seconds, sooner on an unknown kid, with a
        growing retry delay after a failure."""
        interval = self._auth.jwks_refresh
        retry = RETRY_FIRST
        ok = self._auth.jwks_loaded
        loop = asyncio.get_running_loop()
        last = loop.time()
        wanted = self._auth.refresh_wanted
        while True:
            delay = interval if ok else min(retry, interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wanted.wait(), delay)
                # an unknown kid: fetch now, unless we fetched a moment ago
                await asyncio.sleep(max(0.0, last + self._min_interval - loop.time()))
            wanted.clear()
            last = loop.time()
            ok = await self.refresh()
            retry = RETRY_FIRST if ok else min(retry * 2, interval)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp `cleanup_ctx`: first fetch before the replica listens, then the loop."""
        del app
        try:
            await asyncio.wait_for(self.refresh(), FIRST_FETCH_TIMEOUT)
        except TimeoutError:
            log.warning("JWKS first fetch timed out; retrying in the background", extra={"url": self._where})
        task = asyncio.get_running_loop().create_task(self.run(), name="jwks-refresh")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.close()


def jwks_lifecycle(authenticator: Authenticator) -> Callable[[web.Application], AsyncIterator[None]]:
    """What `create_app` appends to `app.cleanup_ctx`: the refresher when JWT_JWKS_URL is set,
    else a no-op."""
    if authenticator.jwks_url:
        return JwksRefresher(authenticator).lifecycle

    async def nothing(app: web.Application) -> AsyncIterator[None]:
        del app
        yield

    return nothing
