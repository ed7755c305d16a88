"""Free TCP ports on loopback for the processes a test starts, safe with several pytest processes.

A port is handed out before the process that listens on it has started (a replica takes about a
second to bind), and some tests use one as "nothing listens here". Asking the kernel for port 0
is not enough for that when pytest-xdist workers, or other pytest runs on the machine, ask at the
same time: the kernel may give the same port twice while nobody has bound it yet, and any
outgoing connection may take it as its source port in the meantime.

So each pytest process claims a block of ports of its own, below the kernel's ephemeral range
(outgoing connections never use those), by holding an exclusive lock on a file named after the
block; the lock goes with the process, however it ends. Ports are handed out from the block in
turn, each checked free by binding it. With no block left (or a machine whose ephemeral range
leaves no room), the kernel's port 0 is the fallback.
"""

from __future__ import annotations

import fcntl
import random
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

BLOCK_SIZE = 400
LOWEST = 10000
LOCK_DIR = Path(tempfile.gettempdir()) / "ngw-test-ports"


class _Block:
    """The ports this process may hand out: [start, start + BLOCK_SIZE)."""

    def __init__(self, start: int, lock: IO[bytes]) -> None:
        self.start = start
        self.lock = lock  # held open: the flock lasts as long as the process
        self.next = 0


def _ephemeral_low() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def _claim_block() -> _Block | None:
    """Lock the first free block, from a random one on (fewer tries when many processes claim)."""
    count = (_ephemeral_low() - LOWEST) // BLOCK_SIZE
    if count <= 0:
        return None
    try:
        LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    except OSError:
        return None
    first = random.randrange(count)  # spreading, not secrecy
    for i in range(count):
        index = (first + i) % count
        try:
            lock = (LOCK_DIR / f"block-{index}.lock").open("ab")
        except OSError:  # another user's lock file: their block
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        return _Block(LOWEST + index * BLOCK_SIZE, lock)
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Claimed on import (outside any event loop: the lock file's open would block one).
_block = _claim_block()


def free_port() -> int:
    """A port nothing listens on, that no other test process of this machine is handed."""
    block = _block
    if block is None:
        return _kernel_port()
    for _ in range(BLOCK_SIZE):
        port = block.start + block.next
        block.next = (block.next + 1) % BLOCK_SIZE
        if _bindable(port):
            return port
    return _kernel_port()


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)

