"""The child side of :class:`storage.io_helper.process.IoProcess`: ``python -m storage.io_helper.worker``.

Reads ``(call id, function, args)`` pickles from stdin, runs each in a thread (so a download and an import overlap),
and writes ``(call id, ok, value or (exception, traceback text), log records)`` to stdout. Log records of a call are sent back with
its answer and emitted by the parent, where the flow's logging is configured. Exits at EOF on stdin (closed or
parent dead) and when its parent pid changes, without finishing running calls: a crashed flow's work is not carried
on behind its back (a rerun resumes it).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.io_helper.process import READY, read_frame, write_frame
from storage.services import Services

_RECORDS: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar("records", default=None)
MAX_CONCURRENT_CALLS = 4
PARENT_CHECK_S = 0.5


class _CallLogHandler(logging.Handler):
    """Keeps each record for the call it was logged in (a copy with the message formatted, so it pickles)."""

    def emit(self, record: logging.LogRecord) -> None:
        records = _RECORDS.get()
        if records is None:  # logged outside a call (e.g. a library's own thread): the child's stderr
            sys.stderr.write(self.format(record) + "\n")
            return
        copy = logging.makeLogRecord(record.__dict__)
        copy.msg, copy.args = record.getMessage(), None
        if record.exc_info:
            copy.exc_text = "".join(traceback.format_exception(*record.exc_info))
            copy.exc_info = None
        records.append(copy)


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (botocore's ClientError and LabelStudioError do), else a RuntimeError
    with its type and text, so the parent still sees what went wrong."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")


def _capture_logs(handler: logging.Handler) -> None:
    """Make ``handler`` the root logger's only handler: importing Prefect (a call's module may) configures its own."""
    root = logging.getLogger()
    if root.handlers != [handler]:
        root.handlers = [handler]
        root.setLevel(logging.INFO)


class _SharedServices:
    """The helper's one :class:`Services` per settings, kept for all its calls: a ``Services`` argument unpickles as
    its settings (no connections yet) and is swapped for the kept one, so the S3 client (~10-90 ms of botocore set-up),
    the annotation backend and the catalog's connection pool are made once per helper, not once per call, as in the
    flow's own process. They go with the helper process."""

    def __init__(self) -> None:
        self._kept: list[Services] = []
        self._lock = threading.Lock()

    def swap(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(self._kept_for(arg) if isinstance(arg, Services) else arg for arg in args)

    def _kept_for(self, fresh: Services) -> Services:
        with self._lock:  # settings compare field by field, secrets included: settings that differ never share
            kept = next((k for k in self._kept if k.settings == fresh.settings), None)
            if kept is None:
                self._kept.append(fresh)
                return fresh
        fresh.close()  # its catalog engine never connected; its clients were never made
        return kept


def _serve(
    call_id: int,
    fn: Any,
    args: tuple[Any, ...],
    out: Any,
    lock: threading.Lock,
    handler: logging.Handler,
    shared: _SharedServices,
) -> None:
    records: list[logging.LogRecord] = []
    _RECORDS.set(records)
    _capture_logs(handler)
    try:
        answer: tuple[Any, ...] = (call_id, True, fn(*shared.swap(args)), records)
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the caller
        where = f"(raised in the I/O helper process {os.getpid()}:\n{traceback.format_exc().rstrip()})"
        answer = (call_id, False, (_portable(error), where), records)
    write_frame(out, answer, lock)


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def main() -> None:
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the answer pipe
    handler = _CallLogHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s (io helper) %(message)s"))
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    lock = threading.Lock()
    import storage.prelabel.fetch  # noqa: F401 - import the stage code before saying ready
    import storage.prelabel.imports  # noqa: F401

    _capture_logs(handler)
    write_frame(out, READY, lock)
    pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix="io-call")
    shared = _SharedServices()
    while True:
        frame = read_frame(inp)
        if frame is None:  # closed by the parent, or the parent is gone: stop now, running calls included
            os._exit(0)
        call_id, fn, args = frame
        pool.submit(contextvars.copy_context().run, _serve, call_id, fn, args, out, lock, handler, shared)


if __name__ == "__main__":
    main()
