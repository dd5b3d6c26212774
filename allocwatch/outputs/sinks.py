# SPDX-License-Identifier: Apache-2.0
"""The record streams (stdout, the journal), without ever blocking the scan loop.

`QueuedOutput` is the queue and thread they share; `FdSink` writes text or
JSON to an fd. `FdSink.publish()` puts a snapshot's records (one block per scan) on a bounded
queue and returns at once; a writer thread renders each block and writes it to
the fd in order, so two blocks never interleave. When the reader is slower than the reports, whole
blocks are dropped (never half of one), counted, and the next block that gets
out is preceded by a notice of how many were dropped.

A reader that has gone (EPIPE) or a file that cannot grow (ENOSPC, EIO) is
fatal: the writer records a typed error and calls `on_fatal`, and the daemon
stops with that error's exit code. A non-blocking fd (EAGAIN) is waited on
with poll(), in the writer thread only.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from allocwatch.core.snapshot import Snapshot
from allocwatch.errors import AllocwatchError, OutputClosed, output_error

Block = Sequence[Mapping[str, Any]]

DEFAULT_MAX_BLOCKS = 8  # scans of backlog a slow reader may build up
_POLL_MS = 200


class _RenderFailed(AllocwatchError):
    """A bug: exit 1, like any internal error."""


class QueuedOutput:
    """A bounded queue of blocks and the thread that empties it: `write()` never
    blocks; a subclass says how one block goes out (`_emit`)."""

    name = "output"  # the metrics label

    def __init__(
        self, max_blocks: int = DEFAULT_MAX_BLOCKS, on_fatal: Callable[[AllocwatchError], None] = lambda e: None
    ) -> None:
        self._max_blocks = max_blocks
        self._on_fatal = on_fatal
        self._queue: deque[Block] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.dropped_blocks = 0  # in all, for metrics
        self._dropped_unsaid = 0  # since the last block that got out
        self.written_blocks = 0
        self.error: AllocwatchError | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    # -- the scan loop's side: never blocks ------------------------------------

    def publish(self, snap: Snapshot) -> None:
        self.write(snap.records)

    def write(self, block: Block) -> None:
        """Queue one block of records; when the queue is full, the block is dropped whole."""
        if not block:
            return
        with self._cond:
            if self.error is not None or self._closing:
                return
            if len(self._queue) >= self._max_blocks:
                self.dropped_blocks += 1
                self._dropped_unsaid += 1
                return
            self._queue.append(block)
            self._cond.notify()

    def close(self, timeout_s: float = 1.0) -> bool:
        """Let the writer finish what is queued, for at most `timeout_s`.
        True if everything queued was written."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        with self._cond:
            return not self._thread.is_alive() and not self._queue and self.error is None

    # -- the writer thread ----------------------------------------------------------

    def _next(self) -> tuple[Block, int] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            block = self._queue.popleft()
            dropped, self._dropped_unsaid = self._dropped_unsaid, 0
        return block, dropped

    def _run(self) -> None:
        while True:
            try:
                item = self._next()
                if item is None:
                    return
                self._emit(*item)
                item = None  # not held while the next is awaited: a block of 10,000 tasks is some 10 MiB
            except Exception as exc:  # a bug in rendering must not silence the stream without a word
                err = exc if isinstance(exc, AllocwatchError) else _RenderFailed(
                    f"internal error: cannot write a report block: {type(exc).__name__}: {exc}")
                with self._cond:
                    self.error = err
                    self._queue.clear()
                self._on_fatal(err)
                return
            self.written_blocks += 1

    def _emit(self, block: Block, dropped_before: int) -> None:
        raise NotImplementedError


class FdSink(QueuedOutput):
    def __init__(
        self,
        fd: int = 1,
        render: Callable[[Block], str | Iterable[str]] = lambda block: "".join(map("{}\n".format, block)),
        drop_notice: Callable[[int], str] = lambda n: f"allocwatch: {n} report block(s) dropped: output too slow\n",
        on_fatal: Callable[[AllocwatchError], None] = lambda err: None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        name: str = "standard output",
        one_write: bool = False,
    ) -> None:
        """`one_write`: a block in one write, as one string (another writer shares the
        file, `>log 2>&1`, and its line would land inside a record written in pieces)."""
        self._one_write = one_write
        self._fd = fd
        self._render = render
        self._drop_notice = drop_notice
        self._name = name
        self.name = "stdout" if fd == 1 else f"fd{fd}"
        super().__init__(max_blocks, on_fatal)

    def _emit(self, block: Block, dropped_before: int) -> None:
        rendered = self._render(block)
        pieces: Iterable[str] = (rendered,) if isinstance(rendered, str) else rendered
        buf = [self._drop_notice(dropped_before)] if dropped_before else []

        def put(texts: Iterable[str]) -> None:
            write_all(self._fd, "".join(texts).encode("utf-8", "backslashreplace"), self._name, _RESTART)

        if self._one_write:
            put([*buf, *pieces])
            return
        size = 0
        for piece in pieces:  # written WRITE_CHARS at a time: a block is never one string whole
            buf.append(piece)
            size += len(piece)
            if size >= WRITE_CHARS:
                put(buf)
                buf, size = [], 0
        if buf:
            put(buf)


_RESTART = "the daemon stops so it can be restarted"
WRITE_CHARS = 1 << 18  # a rendered block's pieces are joined and written this much at a time


def shares_file(fd: int, other: int) -> bool:
    """`fd` and `other` write to one file, pipe or terminal."""
    try:
        a, b = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def write_all(fd: int, data: bytes, name: str = "standard output", then: str = "") -> None:
    """Write all of `data` to `fd`, waiting on a non-blocking one; a reader
    that has gone is OutputClosed (exit 12), a file that cannot grow OutputFailed
    (13). `then` ends the message of a reader that has gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait_writable(fd, name, then)
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            raise output_error(exc, name, then) from None
        view = view[n:]


def _wait_writable(fd: int, name: str, then: str) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    for _fd, events in poller.poll(_POLL_MS):
        if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not events & select.POLLOUT:
            raise OutputClosed(f"{name} was closed by its reader" + (f": {then}" if then else ""))
