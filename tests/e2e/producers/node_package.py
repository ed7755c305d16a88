"""The Node package clients/node-publisher as the tests use it: installed from its lock file
(`npm ci`, once per change of package.json or package-lock.json, as tests/support/node_env.py
does for the driver), built (`npm run build`, once per session), and its node:test files run
with a deployment's addresses in NGW_* variables, their TAP summary parsed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import node_env

PACKAGE = Path(__file__).resolve().parents[3] / "clients" / "node-publisher"
BUILD_TIMEOUT = 300.0
RUN_TIMEOUT = 200.0  # under the tests' 300 s, so that this says what hung

_built: set[Path] = set()


def build() -> Path:
    """`npm ci` (when stale) then `npm run build`; the package directory. RuntimeError with
    npm's output when either fails."""
    node_env.ensure_node_modules(PACKAGE)
    if PACKAGE not in _built:
        done = subprocess.run(
            [node_env.npm_binary(), "run", "build", "--silent"], cwd=PACKAGE, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT, check=False, env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"`npm run build` in {PACKAGE} failed:\n{(done.stdout + done.stderr)[-4000:]}")
        _built.add(PACKAGE)
    return PACKAGE


@dataclass(frozen=True)
class TapSummary:
    tests: int
    passed: int
    failed: int
    skipped: int
    output: str

    def assert_all_passed(self, at_least: int) -> None:
        complete = self.tests >= at_least and self.passed == self.tests and not (self.failed or self.skipped)
        assert complete, f"node tests: {self}\n{self.failures() or self.output[-12000:]}"

    def failures(self) -> str:
        """The TAP blocks of the failed tests (their error, expected and actual values, stack)."""
        blocks = re.findall(r"^\s*not ok .*?(?=^\s*(?:ok|not ok) \d|^# Subtest|\Z)", self.output,
                            re.MULTILINE | re.DOTALL)
        return "\n".join(block[:6000] for block in blocks)

    def __str__(self) -> str:
        return f"{self.tests} tests, {self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def _count(output: str, name: str) -> int:
    found = re.findall(rf"^# {name} (\d+)$", output, re.MULTILINE)
    if not found:
        raise AssertionError(f"no '# {name}' in the TAP output:\n{output[-8000:]}")
    return int(found[-1])


def run_node_tests(files: list[str], env: dict[str, str]) -> TapSummary:
    """Run `node --test` on `files` (relative to the package) with `env` added; the summary.

    In a process group of its own, killed whole however this ends (node:test runs each file in a
    child process of its own, which a plain kill of the runner would leave behind)."""
    build()
    proc = subprocess.Popen(
        [node_env.node_binary(), "--test", "--test-reporter=tap", "--test-concurrency=1", *files],
        cwd=PACKAGE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        raise AssertionError(f"node --test ran over {RUN_TIMEOUT} s:\n{output[-8000:]}") from None
    finally:
        _kill_group(proc)
    return TapSummary(_count(output, "tests"), _count(output, "pass"), _count(output, "fail"),
                      _count(output, "skipped"), output)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def typecheck() -> subprocess.CompletedProcess[str]:
    """`npm run typecheck`: test/types.ts against the built declarations (its @ts-expect-error
    lines must be errors, the rest must not)."""
    build()
    return subprocess.run(
        [node_env.npm_binary(), "run", "typecheck", "--silent"], cwd=PACKAGE, capture_output=True, text=True,
        timeout=BUILD_TIMEOUT, check=False, env={**os.environ, "npm_config_update_notifier": "false"},
    )


def run_node(script: str, *args: str) -> str:
    """Run an ES module script (text) in the package directory, so it imports ./dist; its stdout."""
    build()
    done = subprocess.run(
        [node_env.node_binary(), "--input-type=module", "-e", script, *args], cwd=PACKAGE,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, f"node failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout
