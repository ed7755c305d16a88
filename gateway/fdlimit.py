"""The open-files limit, raised at start: every socket is a file descriptor, so a replica's soft
RLIMIT_NOFILE is its ceiling of connections (past it, accept() fails with EMFILE and new
clients are refused while the old ones are fine).

Soft limits often start low (1024: systemd's default, many container runtimes' too) under a
high hard limit (524288 under systemd, 1048576 under Docker), and any process may raise its own
soft limit up to the hard one, as Go's runtime does by itself since 1.19. The gateway does it at
start, and says in its log what it got, with a warning when even the hard limit is low: that
one only the operator can raise (docker-compose `ulimits: nofile`, the container runtime's
default for Kubernetes, systemd `LimitNOFILE=`; docs/operations.md, "Connections at scale").
"""

from __future__ import annotations

import contextlib
import resource

# Below this many files a replica cannot hold the sockets it is sized for (docs/operations.md).
LOW_OPEN_FILES = 65_536


def raise_open_files_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one (or, when the hard one is unlimited, to the
    kernel's per-process maximum, fs.nr_open); returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1_048_576  # Linux's default fs.nr_open
