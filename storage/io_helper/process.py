"""A helper process that runs the pre-label flow's I/O stage bodies (download + probe, Label Studio import).

Why: a worker runs the model in the flow's thread. The I/O stages are Python too (boto3, JSON, numpy RLE,
SQLAlchemy) and, as threads of the same process, they take the GIL from the model thread between its torch ops.
In a child process their Python runs on its own interpreter; the flow's threads only wait on a pipe
(docs/prelabel-throughput.md has the measurements).

The child is ``python -m storage.io_helper.worker``, not ``multiprocessing``: a script that runs a flow needs no
``if __name__ == "__main__"`` guard, and nothing of the parent is re-imported. Requests and answers are pickles over
the child's stdin/stdout, each with an id, so the fetch of batch k+1 and the import of batch k-1 run at the same time.
Until the child says it is ready (it starts while the flow discovers and fetches its first batch; ``wait_ready_s``
lets calls wait that long, in all, for it), and if it ever dies, calls run in the calling thread instead: slower,
never wrong. The child exits when it is closed, and at once when its parent dies (EOF on its stdin, or a new parent
pid), so it never finishes work for a crashed flow.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

from model.errors import MaskloopError

log = logging.getLogger(__name__)

T = TypeVar("T")
_HEADER = struct.Struct("!Q")
READY = "ready"


class IoProcessDied(MaskloopError, RuntimeError):
    """The helper process exited while a call was running in it (the Prefect task retries it in-thread)."""


def write_frame(stream: IO[bytes], payload: Any, lock: threading.Lock) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        stream.write(_HEADER.pack(len(data)) + data)
        stream.flush()


def read_frame(stream: IO[bytes]) -> Any | None:
    """The next pickled frame, or None at end of stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class IoProcess:
    """``with IoProcess() as io: io.call(fn, *args)`` runs ``fn(*args)`` (a module-level function, picklable
    arguments) in one helper process; ``IoProcess(enabled=False)`` runs every call in the calling thread. Calls
    made before the child is ready wait for it up to ``wait_ready_s`` after :meth:`start`, then run in-thread."""

    def __init__(self, enabled: bool = True, wait_ready_s: float = 0.0) -> None:
        self.enabled = enabled
        self.wait_ready_s = wait_ready_s
        self._ready_deadline = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._dead = threading.Event()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._next_id = 0
        self.calls_in_child = 0
        self.calls_in_thread = 0

    def __enter__(self) -> IoProcess:
        if self.enabled:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._dead.is_set()

    def start(self) -> None:
        """Start the child (it imports maskloop's storage code, ~1 s); calls run in-thread until it is ready."""
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "storage.io_helper.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._ready_deadline = time.monotonic() + self.wait_ready_s
        threading.Thread(target=self._read_answers, name="maskloop-io-reader", daemon=True).start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the child is ready, at most ``timeout_s``; False if it is not (or died)."""
        return self._ready.wait(timeout_s) and not self._dead.is_set()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.ready and self._proc is not None:  # a dead child sets _ready too, so this wait ends at once
            self._ready.wait(max(0.0, self._ready_deadline - time.monotonic()))
        if not self.ready:
            self.calls_in_thread += 1
            return fn(*args)
        future: Future[Any] = Future()
        with self._lock:  # under the lock the reader uses to fail pending calls: no call is left unanswered
            dead = self._dead.is_set()
            if not dead:
                self._next_id += 1
                call_id = self._next_id
                self._pending[call_id] = future
        if dead:
            self.calls_in_thread += 1
            return fn(*args)
        try:
            assert self._proc is not None and self._proc.stdin is not None
            write_frame(self._proc.stdin, (call_id, fn, args), self._write_lock)
        except (OSError, ValueError):  # the child is gone: this call runs here
            with self._lock:
                self._pending.pop(call_id, None)
            self._dead.set()
            self.calls_in_thread += 1
            return fn(*args)
        self.calls_in_child += 1
        ok, value, records = future.result()
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        if not ok:
            error, where = value
            if where:
                error.add_note(where)
            raise error
        return value  # type: ignore[no-any-return]

    def _read_answers(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                frame = read_frame(proc.stdout)
                if frame is None:
                    break
                if frame == READY:
                    self._ready.set()
                    continue
                call_id, ok, value, records = frame
                with self._lock:
                    future = self._pending.pop(call_id, None)
                if future is not None:
                    future.set_result((ok, value, records))
        except Exception:  # noqa: BLE001 - a broken pipe or frame ends the child's use; calls fall back to threads
            log.exception("I/O helper process %s: reading its answers failed", proc.pid)
        finally:
            with self._lock:
                self._dead.set()
                pending, self._pending = self._pending, {}
            self._ready.set()  # wakes calls waiting for a child that will never be ready (ready stays False)
            if proc.poll() is None:  # a broken answer stream: the child is of no further use
                proc.kill()
            for future in pending.values():
                future.set_result((False, (IoProcessDied(f"I/O helper process {proc.pid} exited mid-call"), ""), []))

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the child's stdin (it exits at EOF); kill it if it has not exited after ``timeout_s``. A child that
        never said it was ready ran nothing: it is killed at once, not waited for (a short run would otherwise wait
        for its imports, ~1 s)."""
        proc, self._proc = self._proc, None
        started = self.ready
        self._dead.set()
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            if not started:
                proc.kill()
            proc.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
