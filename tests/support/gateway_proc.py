"""Gateway replicas as real processes, started, signalled and stopped by PID.

    secret = "s" * 32
    with GatewayCluster(2, redis.url, {"JWT_SECRET": secret, "DRAIN_SECONDS": "2"}) as cluster:
        a, b = cluster
        token = make_token(secret, "42", classrooms=("7",))
        ... a.url, a.ns_url, b.sigterm(), b.wait_exit(10), a.log_text() ...

Each process gets a clean environment: the test runner's own gateway settings (PORT,
REDIS_URL, JWT_*...) are removed, then HOST=127.0.0.1, PORT and what the test gives are set.
Output (stdout and stderr) goes to a log file, shown in every failure this module raises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt

from tests.support.ports import free_port

READY_PATH = "/readyz"
POLL_INTERVAL = 0.05
STOP_GRACE = 3.0

# Settings of the gateway that must not leak from the runner's environment into a replica.
_CONTRACT_ENV = (
    "PORT", "HOST", "REDIS_URL", "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_PUBLIC_KEY_FILE",
    "JWT_ALGORITHMS", "JWT_AUDIENCE", "JWT_ISSUER", "JWT_LEEWAY", "FRONTEND_URL",
    "RECOVERY_WINDOW", "DRAIN_SECONDS", "PING_INTERVAL", "PING_TIMEOUT", "GATEWAY_DEV",
)


def _gateway_env_names() -> frozenset[str]:
    names = set(_CONTRACT_ENV)
    try:
        from gateway.config import SETTINGS
    except Exception:  # noqa: BLE001 - any failure: the contract's list is enough
        return frozenset(names)
    names.update(setting.env for setting in SETTINGS)
    return frozenset(names)


def gateway_command() -> list[str]:
    """The installed `gateway` console script beside this interpreter, else `python -m gateway`."""
    script = Path(sys.executable).parent / "gateway"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def make_token(
    secret: str,
    sub: str | int | None,
    role: str | None = "student",
    classrooms: Sequence[str | int] | None = (),
    exp_in: float | None = 3600,
    **claims: Any,
) -> str:
    """An HS256 JWT as the platform issues them. `exp_in` seconds from now (negative: already
    expired; None: no exp). A claim given as None is left out (sub=None: no user id)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub, "role": role,
        "classrooms": list(classrooms) if classrooms is not None else None,
        "iat": now, "exp": None if exp_in is None else now + int(exp_in),
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


class GatewayProcess:
    """One replica. `command` replaces the gateway (the harness self-test uses that)."""

    def __init__(
        self,
        env: Mapping[str, str],
        port: int | None = None,
        args: Sequence[str] = (),
        *,
        command: Sequence[str] | None = None,
        name: str = "gateway",
        log_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.name = name
        self.command = [*(command or gateway_command()), *args]
        strip = _gateway_env_names()
        self.env = {k: v for k, v in os.environ.items() if k not in strip}
        self.env.update({"PORT": str(self.port), "HOST": self.host, "PYTHONUNBUFFERED": "1"})
        self.env.update(env)
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ngw-gw-"))
        self.log_path = self.log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ns_url(self) -> str:
        """The `/notifications` namespace URL, as socket.io-client takes it."""
        return self.url + "/notifications"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} is started already (pid {self.proc.pid})")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of GET path; an HTTP error status is returned, not raised."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            try:
                return int(exc.code), exc.read().decode("utf-8", "replace")
            finally:
                exc.close()

    def wait_ready(self, timeout: float = 15.0) -> Self:
        """Poll GET /readyz until 200. Raises RuntimeError if the process exits first and
        TimeoutError after `timeout`, both with the log's tail."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not self.alive():
                raise RuntimeError(self._failure(f"exited with {self.returncode} before ready"))
            try:
                status, body = self.http_get(READY_PATH, timeout=1.0)
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return self
                last = f"{status} {body[:200]!r}"
            if time.monotonic() > deadline:
                raise TimeoutError(self._failure(f"not ready after {timeout} s (last: {last})"))
            # Nothing to await: readiness is only observable by asking.
            time.sleep(POLL_INTERVAL)

    def sigterm(self) -> None:
        """SIGTERM (the start of a drain); returns at once."""
        self._signal(signal.SIGTERM)

    def suspend(self) -> None:
        """SIGSTOP: the process is frozen, no timer of its fires and it reads nothing, until
        resume(). What it would do meanwhile (a reconnection after a backoff) waits for that."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after suspend(): timers that came due fire at once."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill; waits for the process to be gone."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end on its own; its exit code. TimeoutError with the log."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(self._failure(f"still running {timeout} s later")) from None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; idempotent. Keeps the log's text for
        log_text() and removes the log file (set NGW_KEEP_LOGS=1 to keep it)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGCONT)  # a suspended process would not act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._final_log is None and self.log_path.exists():
            self._final_log = self.log_path.read_text("utf-8", "replace")
            if not os.environ.get("NGW_KEEP_LOGS"):
                if self._own_log_dir:
                    shutil.rmtree(self.log_dir, ignore_errors=True)
                else:
                    self.log_path.unlink(missing_ok=True)

    def log_text(self) -> str:
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<GatewayProcess {self.name} {self.url} pid={pid} rc={self.returncode}>"

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def _failure(self, what: str) -> str:
        return (
            f"{self.name} ({' '.join(self.command)}, pid {self.proc.pid if self.proc else '-'}, "
            f"{self.url}) {what}\n"
            f"-- last lines of {self.log_path}:\n{self.log_tail()}"
        )


class GatewayCluster:
    """n replicas on one Redis. Iterate or index it for the GatewayProcess objects."""

    def __init__(
        self,
        n: int,
        redis_url: str | None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        *,
        command: Sequence[str] | None = None,
    ) -> None:
        common = dict(env or {})
        if redis_url is not None:
            common["REDIS_URL"] = redis_url
        self.replicas = [
            GatewayProcess(common, args=args, command=command, name=f"gateway-{i}")
            for i in range(n)
        ]

    def start(self, ready_timeout: float = 15.0) -> Self:
        """Start every replica, then wait for each to be ready; on failure stop them all."""
        try:
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                replica.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for replica in self.replicas:
            replica.sigterm()
        for replica in self.replicas:
            replica.stop()

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def __iter__(self) -> Iterator[GatewayProcess]:
        return iter(self.replicas)

    def __getitem__(self, index: int) -> GatewayProcess:
        return self.replicas[index]

    def __len__(self) -> int:
        return len(self.replicas)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
