"""The mistakes of a first hour, tried as a new user would make them: each ends in one line
that says what to do, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from publisher import Publisher
from tests.support.gateway_proc import GatewayProcess, gateway_command
from tests.support.ports import free_port


def run_gateway(env: dict[str, str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "REDIS_", "PORT", "GATEWAY_"))}
    return subprocess.run([*gateway_command(), *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_no_secret_says_how_to_set_one() -> None:
    done = run_gateway({"PORT": str(free_port())})
    assert done.returncode == 2
    assert "JWT_SECRET: not set" in done.stderr
    assert "gateway --dev" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_gateway({"JWT_SECRET": "s" * 40, "HOST": "127.0.0.1", "PORT": str(port)})
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_redis_that_does_not_answer_is_named_and_readiness_says_so() -> None:
    dead = free_port()
    gw = GatewayProcess({"JWT_SECRET": "s" * 40, "REDIS_URL": f"redis://127.0.0.1:{dead}/0", "LOG_FORMAT": "text"})
    gw.start()
    try:
        deadline = time.monotonic() + 15
        while "cannot reach Redis" not in gw.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = gw.log_text()
        assert f"cannot reach Redis at redis://127.0.0.1:{dead}" in log
        assert "Start Redis" in log
        assert gw.http_get("/readyz")[0] == 503
        assert gw.http_get("/healthz")[0] == 200
    finally:
        gw.stop()


def test_a_malformed_publisher_call_names_the_field() -> None:
    pub = Publisher(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(ValueError, match="newBalance"):
            pub.emit("coins:earned", {"amount": 5, "reason": "quiz", "newBalance": "12"}, user=1, strict=True).result()
        with pytest.raises(ValueError, match="newBalance"):
            pub.coins_earned(1, amount=5, reason="quiz", new_balance="12").result()  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="exactly one target"):
            pub.emit("coins:earned", {"amount": 5, "reason": "quiz", "newBalance": 1}, user=1, room="classroom:1")
    finally:
        pub.close()


def test_the_publisher_cli_says_what_is_wrong_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "publisher", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                           "emit", "coins:earned", "{bad json", "--user", "1"],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "JSON" in done.stderr
