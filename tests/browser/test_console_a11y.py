"""The dev console passes axe-core's accessibility rules (WCAG 2.1 A and AA, and axe's best
practices), in light and dark colour schemes, once connected and showing an event.

axe-core comes from npm (tests/browser/package.json and its lock), installed into
tests/browser/node_modules when missing; the test skips, saying why, without Node.js. The page's
CSP admits no injected script, so this test's browser context bypasses it; the other browser
tests keep it and fail on any violation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import VIEWPORT, DevGateway
from tests.support import node_env

pytestmark = pytest.mark.browser

BROWSER_DIR = Path(__file__).resolve().parent
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture(scope="module")
def axe_source() -> str:
    try:
        modules = node_env.ensure_node_modules(BROWSER_DIR)
    except node_env.NodeMissingError as exc:
        pytest.skip(f"no accessibility check: {exc}")
    return (modules / "axe-core" / "axe.min.js").read_text(encoding="utf-8")


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = [" ".join(node["target"]) for node in v["nodes"]]
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} -> {targets[:5]}")
    return "\n".join(lines)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_console_has_no_accessibility_violations(
    chromium: Any, dev_gateway: DevGateway, axe_source: str, scheme: str
) -> None:
    context = chromium.new_context(viewport=VIEWPORT, color_scheme=scheme, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(dev_gateway.url + "/")  # the console connects by itself
        expect(page.locator("#rooms")).to_contain_text("user:1")
        page.get_by_role("button", name="Send event").click()
        expect(page.locator("#events li")).to_have_count(1)
        page.get_by_text("Token for another user").click()
        page.locator("#log-card summary").click()
        page.wait_for_timeout(1300)  # the new event's highlight has faded
        page.add_script_tag(content=axe_source)
        result = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
            TAGS,
        )
    finally:
        context.close()
    assert result["violations"] == [], describe(result["violations"])
