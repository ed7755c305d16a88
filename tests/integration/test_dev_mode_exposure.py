"""`gateway --dev` stays on this machine unless told otherwise, and says so loudly when it is
told (issue 12, item 4). The console's peer check itself is unit-tested with chosen peer
addresses (tests/unit/test_console_loopback.py); here a real replica listening on 0.0.0.0 is
asked for the console through this machine's own network address, with a forged Host header.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess

BEYOND = "development mode is listening on 0.0.0.0"


def listening(replica: GatewayProcess) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        for line in replica.log_text().splitlines():
            if line.startswith("{") and json.loads(line).get("msg") == "listening":
                record: dict[str, object] = json.loads(line)
                return record
        return None

    found: dict[str, object] = wait_until(find, 10, "the listening line")
    return found


def own_network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy


def status(url: str, headers: dict[str, str]) -> int:
    try:
        with DIRECT.open(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_dev_listens_on_loopback_by_default_and_says_nothing_alarming() -> None:
    replica = GatewayProcess({"LOG_FORMAT": "json"}, args=["--dev"], name="dev-default")
    del replica.env["HOST"]  # the harness sets HOST=127.0.0.1; here --dev must choose it
    try:
        replica.start()
        replica.wait_ready()
        assert listening(replica)["host"] == "127.0.0.1"
        assert status(replica.url + "/", {}) == 200
    finally:
        replica.stop()
    assert BEYOND not in replica.log_text()
    assert "WARNING:" not in replica.log_text()


def test_dev_beyond_loopback_warns_and_keeps_the_console_local() -> None:
    replica = GatewayProcess({"HOST": "0.0.0.0", "LOG_FORMAT": "json"}, args=["--dev"],
                             name="dev-exposed")
    try:
        replica.start()
        replica.wait_ready()
        assert listening(replica)["host"] == "0.0.0.0"
        warnings = [json.loads(line) for line in replica.log_text().splitlines()
                    if line.startswith("{") and BEYOND in line]
        assert warnings, "a WARNING log line"
        assert warnings[0]["level"] == "warning"
        wait_until(lambda: "WARNING:       listening on 0.0.0.0" in replica.log_text(), 10, "the banner's warning")
        assert status(replica.url + "/", {}) == 200, "from this machine the console still answers"
        address = own_network_address()
        if address is not None:  # the same machine, reached by its network address: not a loopback peer
            forged = {"Host": f"127.0.0.1:{replica.port}", "X-Forwarded-For": "127.0.0.1"}
            assert status(f"http://{address}:{replica.port}/", forged) == 403
            assert status(f"http://{address}:{replica.port}/healthz", {}) == 200, "the replica itself answers"
    finally:
        replica.stop()
