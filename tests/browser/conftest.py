"""Browser fixtures: the real gateway in --dev as a process, Debian's Chromium driven by
Playwright (never a browser Playwright downloads), a fresh page per test.

The tests that need Chromium are marked `browser` and skip, saying why, when it is missing:
`apt-get install chromium` (or point NGW_CHROMIUM at another Chromium binary).
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.gateway_proc import GatewayProcess

CHROMIUM = os.environ.get("NGW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1400, "height": 1000}

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item, so fixtures can tell in teardown whether it failed.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(r.failed for r in request.node.stash.get(_REPORTS, {}).values())


@dataclass
class DevGateway:
    """A `gateway --dev` process and what a producer needs to reach it."""

    proc: GatewayProcess
    publish_key: str

    @property
    def url(self) -> str:
        return self.proc.url

    def emit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /api/emit, as a producer that is not Python does; the JSON answer."""
        request = urllib.request.Request(
            self.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.publish_key}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise AssertionError(f"POST /api/emit: {exc.code} {exc.read()!r}") from None
        return answer


@pytest.fixture(scope="module")
def dev_gateway() -> Iterator[DevGateway]:
    """One `gateway --dev` for the module; a 1 s heartbeat so ping/pong shows quickly."""
    key = secrets.token_urlsafe(24)
    env = {"PUBLISH_API_KEY": key, "PING_INTERVAL": "1000", "PING_TIMEOUT": "5000"}
    proc = GatewayProcess(env, args=["--dev"], name="gateway-dev")
    proc.start()
    try:
        proc.wait_ready()
        yield DevGateway(proc, key)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright, for one module: the sync API keeps an event loop
    of its own while it runs, which pytest-asyncio's tests in other modules must not meet."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
                    "or set NGW_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageProbe:
    """What the page did that a test may want to check: errors, WebSocket URLs."""

    errors: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)


@pytest.fixture
def probe() -> PageProbe:
    return PageProbe()


@pytest.fixture
def page(chromium: Any, dev_gateway: DevGateway, probe: PageProbe,
         request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh context and page with the console loaded and connected (it connects by itself,
    over WebSocket, with the token it was served); fails the test on any script error or CSP
    violation, and prints the page's protocol log when the test failed."""
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: probe.errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: probe.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("websocket", lambda ws: probe.websockets.append(ws.url))
    page.goto(dev_gateway.url + "/")
    try:
        # Settled before the test acts: a WebSocket closed while it opens is a console error.
        expect(page.locator("#state")).to_have_attribute("data-state", "connected")
        yield page
        if _failed(request):
            packets = "\n".join(page.locator("#log li").all_text_contents())
            print(f"-- console protocol log:\n{packets}")
            print(f"-- {dev_gateway.proc!r} log:\n{dev_gateway.proc.log_tail(80)}")
    finally:
        context.close()
    assert not probe.errors, f"the console page reported errors: {probe.errors}"
