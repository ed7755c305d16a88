"""Fixtures and hooks shared by every test layer. Processes are started per test or per module and
stopped by PID; nothing depends on the machine's own Redis.

Two rules hold for the whole suite:

- an in-process async test fails on a blocking call made inside its event loop (`time.sleep`,
  a blocking socket or file operation, a lock wait...): `blockbuster` raises `BlockingError` at
  the call, wherever it is, in the test, a fixture, the gateway or the publisher;
- with `CI=true`, a test that skips fails instead, unless its reason is one of
  `DELIBERATE_SKIPS`: a skip there means missing infrastructure (nginx, Chromium, Node,
  kubectl/kustomize, kubernetes-validate, hadolint), which scripts/test installs.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Generator, Iterator

import hypothesis
import pytest
from blockbuster import BlockBuster

from tests.support.redis_server import RedisServer
from tests.support.reports import REPORTS

# Hypothesis judges a test by the clock too (a deadline per example, a health check on slow
# generation): on two cores shared by two xdist workers and their replicas, that fails tests at
# random. The suite's rule is no timings in tests; what hypothesis checks stays the same.
hypothesis.settings.register_profile(
    "ngw", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("ngw")

# Blocking calls inside the event loop that are known, bounded and not ours to change:
# (file path suffix, function names). Each says why it is tolerated.
ALLOWED_BLOCKING: tuple[tuple[str, frozenset[str]], ...] = (
    # redis-py looks its own version up with importlib.metadata (a few stats of site-packages)
    # each time it builds a client or connection: once per connection, never per command.
    ("redis/utils.py", frozenset({"get_lib_version"})),
    # A replica's app is built inside the event loop before it listens (gateway.__main__.serve):
    # reading the console's template, keys and the like there delays only the start.
    ("gateway/app.py", frozenset({"create_app"})),
)

# Skips that are not about the machine: they stay skips in CI.
DELIBERATE_SKIPS = (
    # tests/unit/test_deploy_manifests.py: CRDs have no upstream schema to validate against
    "custom resource: no upstream schema",
)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's workers must collect the same tests in the same order, and a test
    # parametrized from a set of strings is ordered by their hashes: every worker gets the
    # controller's hash seed (random per run, as Python's default, and shown in the header).
    if not os.environ.get("PYTHONHASHSEED"):
        os.environ["PYTHONHASHSEED"] = str(random.randint(1, 2**32 - 1))


def pytest_report_header(config: pytest.Config) -> str:
    return f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')} (the workers' hash seed)"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and _in_ci():
        reason = _skip_reason(report)
        if not reason.startswith(DELIBERATE_SKIPS):
            report.outcome = "failed"
            report.longrepr = (
                f"CI=true: this test skipped ({reason}); in CI a skip for missing infrastructure "
                "is a failure (scripts/test installs it all). A skip that is deliberate belongs "
                "in DELIBERATE_SKIPS in tests/conftest.py."
            )
    # Keep each phase's report on the item, so fixtures can tell in teardown whether it failed.
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def no_blocking_in_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """For async tests: BlockingError on a blocking call from the thread running the event loop.

    Chosen over asyncio's debug mode (`slow_callback_duration`): that one only logs a callback
    that happened to be slow on this run, so it misses a short `time.sleep` or a blocking
    `recv` that the peer answered fast, and would make the result depend on machine load.
    blockbuster patches the blocking functions themselves (time.sleep, socket and file
    operations, os.read/write, lock acquires...) and raises whenever one is called while an
    event loop runs in the calling thread; non-blocking sockets (asyncio's own) are left alone.
    Sync tests and code in other threads (a thread pool, a process) are not concerned.
    """
    function = getattr(request.node, "obj", None)
    if function is None or not inspect.iscoroutinefunction(inspect.unwrap(function)):
        yield
        return
    buster = BlockBuster()
    for path, functions in ALLOWED_BLOCKING:
        for function_name in functions:
            for wrapped in buster.functions.values():
                wrapped.can_block_in(path, function_name)
    buster.activate()
    try:
        yield
    finally:
        buster.deactivate()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for a module whose tests use unique key prefixes."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
