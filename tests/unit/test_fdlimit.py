"""The gateway raises its soft open-files limit to the hard one at start (gateway/fdlimit.py):
one descriptor per socket, and soft limits start at 1024 in many runtimes."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    code = ("import resource; from gateway.fdlimit import raise_open_files_limit; "
            "before = resource.getrlimit(resource.RLIMIT_NOFILE); print(*before, *raise_open_files_limit())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=lower)
    before_soft, before_hard, after_soft, after_hard = map(int, out.stdout.split())
    assert (before_soft, before_hard) == (low, hard)
    expected = hard if hard != resource.RLIM_INFINITY else after_soft
    assert (after_soft, after_hard) == (expected, hard)
    assert after_soft >= low
