"""The sync publisher's sender: auto-pipelining on a background thread.

Why: Redis pays a wake-up, a round trip and a script call per write, which costs it more than
the publish itself. A web request or a Celery task emits one event at a time; written one per
round trip, each event pays all of that (bench/results/bus-v2-redis-cpu.md). So, as ioredis
and Kafka producers do, `emit` only queues, and one thread per publisher and process writes
what is queued: after at most `linger` seconds (or as soon as `max_batch` items wait), as one
round trip carrying one publish.lua call per slot group (`Commands.publish_all`). Under load a
write carries everything queued while the previous one was in flight.

Everything else a publisher does (join, leave, kick, presence, `emit_many`, batches) goes
through the same queue, in order, and its caller waits for its own reply: a join issued after
an emit runs after that emit is written.

- Backpressure: the queue holds at most `max_queue` items; `submit` blocks while it is full.
  Nothing is ever dropped silently.
- Failures: the transport's retry rules apply to each write (`publisher.script_runner`,
  `publisher.cluster`); if a write still fails, exactly its futures get the exception (on a
  cluster, those of the calls that failed: another shard's emits keep their positions), it is
  logged (at most once per `_LOG_EVERY` seconds, with a count), and `flush` raises.
- Fork: a child never touches the parent's queue, lock or thread (the lock may have been held
  at the fork); it starts its own on first use. The transports make their own connections.
- Done callbacks (`future.add_done_callback`) run on the sender thread: they may emit (never
  blocked by a full queue there), but a call that waits would wait for itself, so it raises
  `PublisherError` instead.
- A signal handler may emit (the lock is reentrant: it may interrupt an emit), not wait.
- Exit: the thread is a daemon that ends after `_IDLE_EXIT` seconds without work (and starts
  again on demand); while it runs, an `atexit` hook flushes with a bounded wait.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from publisher.commands import Commands, Emit
from publisher.errors import PublisherError, PublishError, PublishTimeout
from publisher.replies import outcomes
from publisher.transports import SyncRunner

log = logging.getLogger("publisher")

T = TypeVar("T")

DEFAULT_LINGER: Final = 0.001  # s: ~4 events per write at 4,000/s from one serial producer
MAX_BATCH: Final = 512  # items per write
MAX_QUEUE: Final = 10_000  # items waiting before `submit` blocks
AT_EXIT_WAIT: Final = 5.0  # s the atexit hook waits for the queue to be written
_IDLE_EXIT: Final = 30.0  # s without work before the thread ends (started again on demand)
_LOG_EVERY: Final = 10.0  # s between two logs of failed writes
SENDER_THREAD: Final = "publisher-sender"


class Emitted(Future[str]):
    """The future of one emit: a `concurrent.futures.Future` that knows whether its outcome
    was looked at, so that `flush` reports only the failures nobody has seen."""

    observed = False
    error: BaseException | None = None  # the failure, for `flush` (reading it observes nothing)

    def __init__(self, hurry: Callable[[], None]) -> None:
        super().__init__()
        self._hurry = hurry

    def result(self, timeout: float | None = None) -> str:
        self.observed = True
        if not self.done():
            _refuse_waiting_on_the_sender()
            self._hurry()  # someone waits: no point lingering
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.observed = True
        if not self.done():
            _refuse_waiting_on_the_sender()
            self._hurry()
        return super().exception(timeout)


class _SenderThread(threading.Thread):
    """A sender's thread: done callbacks run on it, and it must never wait for itself."""


def _on_a_sender() -> bool:
    return isinstance(threading.current_thread(), _SenderThread)


def _refuse_waiting_on_the_sender() -> None:
    """A done callback runs on the sender thread: waiting there for the sender would hang it."""
    if _on_a_sender():
        raise PublisherError(
            "a publisher call that waits (result(), flush(), join(), emit_many()...) was made on "
            "the publisher's sender thread, from a done callback; it would wait for itself. Hand "
            "the work to another thread, or use emit() without waiting")


class _Task:
    """A call that is not an emit: run in order on the sender thread, its caller waiting."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[SyncRunner], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


_Item = tuple[Emit, Emitted] | _Task


class _State:
    """Everything a process's sender has: made again in a child after fork."""

    __slots__ = ("closing", "failed", "finished", "first_at", "flushing", "handed", "idle", "lock",
                 "not_empty", "not_full", "pid", "queue", "thread", "urgent")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()  # reentrant: a signal handler may emit inside an emit
        self.not_empty = threading.Condition(self.lock)  # the sender waits for work
        self.not_full = threading.Condition(self.lock)  # producers wait for room
        self.idle = threading.Condition(self.lock)  # flush waits for the items before it
        self.queue: deque[_Item] = deque()
        self.handed = self.finished = 0  # items handed in, items done (in that order: FIFO)
        self.first_at = 0.0  # when the oldest queued item came (monotonic)
        self.urgent = False  # someone waits: write without lingering
        self.flushing = 0  # callers in flush(): no lingering until they are done
        self.thread: threading.Thread | None = None
        self.closing = False
        self.failed: deque[Emitted] = deque(maxlen=MAX_QUEUE)  # since the last flush


class Sender:
    """The queue and thread of one publisher (see the module doc)."""

    def __init__(self, runner: SyncRunner, commands: Commands, *, linger: float = DEFAULT_LINGER,
                 max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE) -> None:
        if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger <= 60:
            raise ValueError(f"linger must be seconds from 0 to 60, got {linger!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive integer, got {max_queue!r}")
        self._runner = runner
        self._commands = commands
        self._linger = float(linger)
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._state = _State()
        self._closed = False
        self._hook: Callable[[], None] | None = None
        self._logged_at = -_LOG_EVERY
        self._unlogged = 0

    # -- producers' side ------------------------------------------------------------------

    def _current(self) -> _State:
        state = self._state
        if state.pid != os.getpid():  # a child after fork: never the parent's lock or thread
            state = self._state = _State()
            self._hook = None
        return state

    def _submit(self, items: list[_Item], urgent: bool) -> None:
        if not items:
            return
        state = self._current()
        wake = False
        with state.lock:
            if self._closed:
                raise PublisherError("this publisher is closed")
            if state.thread is None:
                self._start(state)  # it takes the lock once this call waits or is done
            patient = not _on_a_sender()  # a done callback's emit may not wait for its own thread
            for item in items:
                while patient and len(state.queue) >= self._max_queue:  # backpressure, never a drop
                    state.urgent = True
                    state.not_empty.notify()
                    state.not_full.wait()
                wake = not state.queue
                if wake:
                    state.first_at = time.monotonic()
                state.queue.append(item)
                state.handed += 1
            if urgent:
                state.urgent = True
            # Woken for the first item, a full batch, or a caller waiting; not for each emit
            # while it lingers (a thread switch per event would cost more than the wait saves).
            if urgent or wake or len(state.queue) >= self._max_batch:
                state.not_empty.notify()

    def emit(self, emit: Emit) -> Emitted:
        """Queue one checked event; the future resolves to its position, or its failure."""
        future = Emitted(self._hurry)
        self._submit([(emit, future)], False)
        return future

    def emit_all(self, emits: list[Emit]) -> list[Emitted]:
        """Queue several events, in order, for a caller about to wait for them."""
        futures = [Emitted(self._hurry) for _ in emits]
        self._submit(list(zip(emits, futures, strict=True)), True)
        return futures

    def call(self, fn: Callable[[SyncRunner], T]) -> T:
        """Run `fn(runner)` on the sender thread after everything queued before; its result."""
        _refuse_waiting_on_the_sender()
        task = _Task(fn)
        self._submit([task], True)
        return task.future.result()  # type: ignore[no-any-return]

    def _hurry(self) -> None:
        """Write what is queued without waiting out the linger: someone waits for it."""
        state = self._current()
        with state.lock:
            state.urgent = True
            state.not_empty.notify()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything handed in is written and acknowledged. `PublishTimeout` if
        that takes longer than `timeout` s; `PublishError` if an emit failed since the last
        flush and nobody looked at its future's outcome (`result()`, `exception()`)."""
        _refuse_waiting_on_the_sender()
        state = self._current()
        with state.lock:
            state.flushing += 1
            state.not_empty.notify()
            try:
                target = state.handed  # not later emits: under load the queue never runs dry
                idle = state.idle.wait_for(lambda: state.finished >= target, timeout)
            finally:
                state.flushing -= 1
            if not idle:
                raise PublishTimeout(
                    f"flush: {target - state.finished} item(s) still not acknowledged by Redis at "
                    f"{self._runner.where} after {timeout} s")
            failed = [future for future in state.failed if not future.observed]
            state.failed.clear()
        if failed:
            error = failed[-1].error
            raise PublishError(
                f"{len(failed)} emit(s) failed since the last flush, the last with: {error}") from error

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the thread; later calls raise `PublisherError`."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            state = self._current()
            with state.lock:
                self._closed = state.closing = True
                state.not_empty.notify()
                thread = state.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
            if self._hook is not None:
                atexit.unregister(self._hook)
                self._hook = None

    def _at_exit(self) -> None:
        try:
            self.flush(AT_EXIT_WAIT)
        except PublisherError as exc:
            log.error("publisher: at exit, %s", exc)  # noqa: TRY400 - the cause is in the message

    def _start(self, state: _State) -> None:
        """Under `state.lock`: the thread, and (once) the exit hook."""
        state.thread = _SenderThread(target=self._loop, args=(state,), name=SENDER_THREAD,
                                     daemon=True)
        state.thread.start()
        if self._hook is None:
            this = weakref.ref(self)

            def hook() -> None:
                sender = this()
                if sender is not None and not sender._closed:
                    sender._at_exit()

            self._hook = hook
            atexit.register(hook)

    # -- the sender thread ----------------------------------------------------------------

    def _take(self, state: _State) -> list[_Item] | None:
        """Under `state.lock`: the next write's items once due; None: the thread ends."""
        queue = state.queue
        while not queue:
            if state.closing:
                state.thread = None
                return None
            if not state.not_empty.wait(_IDLE_EXIT) and not queue:
                state.thread = None
                return None
        if self._linger:
            while not (state.urgent or state.flushing or state.closing) and len(queue) < self._max_batch:
                left = state.first_at + self._linger - time.monotonic()
                if left <= 0:
                    break
                state.not_empty.wait(left)
        if isinstance(queue[0], _Task):
            items: list[_Item] = [queue.popleft()]
        else:
            items = []
            while queue and len(items) < self._max_batch and not isinstance(queue[0], _Task):
                items.append(queue.popleft())
        if queue:  # what is left waited already: written next, without lingering
            state.first_at = float("-inf")
        else:
            state.urgent = False
        state.not_full.notify_all()
        return items

    def _loop(self, state: _State) -> None:
        while True:
            with state.lock:
                items = self._take(state)
            if items is None:
                return
            try:
                failed = self._write(items)
            except BaseException as exc:  # a dead thread would hang every later call
                log.exception("publisher: the sender thread failed a write")
                failed = _fail_unsettled(items, exc)
            with state.lock:
                state.finished += len(items)
                state.failed.extend(failed)
                if state.flushing:
                    state.idle.notify_all()

    def _write(self, items: list[_Item]) -> list[Emitted]:
        """One write; the futures of the emits that failed."""
        first = items[0]
        if isinstance(first, _Task):
            if first.future.set_running_or_notify_cancel():
                try:
                    first.future.set_result(first.fn(self._runner))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it, whatever it is
                    first.future.set_exception(exc)
            return []
        # A future cancelled before its write is not published.
        live = [item for item in items
                if isinstance(item, tuple) and item[1].set_running_or_notify_cancel()]
        if not live:
            return []
        emits, plan = [emit for emit, _ in live], []
        try:
            plan = self._commands.publish_all(emits, by_slot=self._runner.sharded)
            replies: list[Any] | BaseException = self._runner.run([call for call, _ in plan])
        except Exception as exc:  # noqa: BLE001 - the futures get it; the thread goes on
            replies = exc
        failed: list[Emitted] = []
        for (_, future), outcome in zip(live, outcomes(plan, replies, len(emits)), strict=True):
            if isinstance(outcome, BaseException):  # its own call's failure, not another shard's
                future.error = outcome
                failed.append(future)
            _settle(future, outcome)
        self._log_failures(failed)
        return failed

    def _log_failures(self, failed: list[Emitted]) -> None:
        """At most once per `_LOG_EVERY` s: how many emits failed since the last log."""
        self._unlogged += len(failed)
        if failed and (now := time.monotonic()) - self._logged_at >= _LOG_EVERY:
            log.error("publisher: %d emit(s) failed (their futures hold the error): %s",
                      self._unlogged, failed[-1].error)
            self._logged_at, self._unlogged = now, 0


def _settle(future: Emitted, outcome: str | BaseException) -> None:
    """Resolve `future`, whatever its done callbacks do: `concurrent.futures` logs a callback's
    `Exception` but lets a `BaseException` (a `sys.exit()` in a callback) out, and out of the
    sender thread it would leave the other emits of the write, and every later call, waiting."""
    try:
        future.set_exception(outcome) if isinstance(outcome, BaseException) else future.set_result(outcome)
    except BaseException:  # logged; the thread must go on
        log.exception("publisher: a done callback raised on the sender thread (ignored)")


def _fail_unsettled(items: list[_Item], exc: BaseException) -> list[Emitted]:
    """Every future of `items` not yet resolved fails (no caller left waiting); the emits'."""
    failed: list[Emitted] = []
    for item in items:
        future = item.future if isinstance(item, _Task) else item[1]
        if future.done():
            continue
        error = PublisherError(f"the publisher's sender thread failed: {exc!r}")
        if isinstance(future, Emitted):
            future.error = error
            failed.append(future)
        try:
            future.set_exception(error)
        except BaseException:  # a callback again, or a state we cannot fix
            log.exception("publisher: could not fail a future after that")
    return failed
