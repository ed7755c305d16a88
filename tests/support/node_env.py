"""The Node side of the end-to-end tests: `node`, `npm` and tests/e2e/driver/node_modules.

`ensure_node_modules()` installs the driver's packages (the real `socket.io-client`, the real
`@socket.io/redis-emitter` with `redis` for the bridge tests, and `socket.io` for the harness
self-test) from its lock file, once per session, and again only
when package.json or package-lock.json changed since: a hash of both is kept in
node_modules/.ngw-lock-hash. Several pytest processes may call it at once; a file lock makes
them take turns.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DRIVER_DIR = Path(__file__).resolve().parents[1] / "e2e" / "driver"
HASH_FILE = ".ngw-lock-hash"
MIN_NODE_MAJOR = 18
INSTALL_TIMEOUT = 600.0

_installed: set[Path] = set()


class NodeMissingError(RuntimeError):
    """node or npm is not installed, or too old: the e2e tests cannot run."""


def node_binary() -> str:
    """Path of `node`, checked to be recent enough for socket.io-client 4.8."""
    node = shutil.which("node")
    if node is None:
        raise NodeMissingError(
            "the e2e tests drive the real socket.io-client and need Node.js >= "
            f"{MIN_NODE_MAJOR} on PATH (Debian: apt-get install nodejs npm)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".", 1)[0])
    if major < MIN_NODE_MAJOR:
        raise NodeMissingError(
            f"{node} is Node.js {version}; the e2e tests need >= {MIN_NODE_MAJOR}"
        )
    return node


def npm_binary() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise NodeMissingError(
            "npm is not on PATH; it installs tests/e2e/driver's packages "
            "(Debian: apt-get install npm)"
        )
    return npm


def lock_hash(driver_dir: Path = DRIVER_DIR) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = driver_dir / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    return digest.hexdigest()


def _up_to_date(driver_dir: Path, want: str) -> bool:
    stamp = driver_dir / "node_modules" / HASH_FILE
    return stamp.is_file() and stamp.read_text().strip() == want


def ensure_node_modules(driver_dir: Path = DRIVER_DIR) -> Path:
    """Make driver_dir/node_modules match the lock file; return the node_modules path.

    Raises NodeMissingError without node/npm, and RuntimeError (with npm's output) when the
    install fails.
    """
    driver_dir = driver_dir.resolve()
    modules = driver_dir / "node_modules"
    if driver_dir in _installed:
        return modules
    node_binary()
    want = lock_hash(driver_dir)
    lock_path = Path(tempfile.gettempdir()) / (
        "ngw-npm-" + hashlib.sha256(str(driver_dir).encode()).hexdigest()[:16] + ".lock"
    )
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _up_to_date(driver_dir, want):
                _install(driver_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _installed.add(driver_dir)
    return modules


def _install(driver_dir: Path) -> None:
    npm = npm_binary()
    has_lock = (driver_dir / "package-lock.json").exists()
    command = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    shown = " ".join(command)
    try:
        done = subprocess.run(
            command, cwd=driver_dir, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
            env=env, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{shown}` in {driver_dir} took over {INSTALL_TIMEOUT} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-4000:]
        raise RuntimeError(
            f"`{shown}` in {driver_dir} failed with exit code {done.returncode}:\n{output}"
        )
    # `npm install` may have written the lock file: stamp what is there now.
    (driver_dir / "node_modules" / HASH_FILE).write_text(lock_hash(driver_dir) + "\n")
