"""What a person sees in the terminal: quiet by default (warnings and one line per stage), a live progress bar on a
TTY (plain lines every few seconds elsewhere), ``-v`` for maskloop's and Prefect's INFO, ``-vv`` for DEBUG; the full
log, third-party warnings included, goes to ``<data dir>/logs/maskloop.log``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

PROGRESS, STAGE = "maskloop.progress", "maskloop.stage"
# Libraries whose warnings say nothing to a user (weight-loading reports, deprecations): the log file only.
FILE_ONLY = ("py.warnings", "transformers", "huggingface_hub", "torch", "PIL", "alembic", "pycocotools")
PLAIN_EVERY_S = 5.0
ERRORS = "maskloop.errors"  # the CLI's record of a failed command: the log file only


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def progress_line(
    processed: int, assets: int, masks: int, failed: int, elapsed: float, width: int = 24, bar: bool = True
) -> str:
    """``[#####.....] 12/40 assets, 57 masks, 1 failed, 6.3 img/s, ETA 0:05`` (no bar for plain lines)."""
    rate = processed / elapsed if elapsed > 0 else 0.0
    eta = _clock((assets - processed) / rate) if rate > 0 and processed < assets else ("0:00" if processed else "?")
    text = f"{processed}/{assets} assets, {masks} masks, {failed} failed, {rate:.1f} img/s, ETA {eta}"
    if not bar:
        return text
    filled = int(width * processed / assets) if assets else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {text}"


class TerminalProgress(logging.Handler):
    """``maskloop.progress`` records as a live bar (TTY) or a plain line every few seconds, ``maskloop.stage``
    records as one line each."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        super().__init__(logging.INFO)
        self._stream = stream
        self._tty = tty
        self._bar_shown = False
        self._last_plain = 0.0

    @property
    def stream(self) -> TextIO:
        """The given stream, else whatever ``sys.stderr`` is now (it may have been replaced since)."""
        return self._stream or sys.stderr

    @property
    def tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        try:
            return self.stream.isatty()
        except ValueError:  # a closed stream
            return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._draw(record)
        except Exception:  # noqa: BLE001 - a broken terminal must never fail the run (as logging's own handlers)
            self.handleError(record)

    def _draw(self, record: logging.LogRecord) -> None:
        if record.name == STAGE:
            self.end_bar()
            self.stream.write(record.getMessage() + "\n")
        else:
            done, total = int(getattr(record, "done", 0)), int(getattr(record, "total", 1))
            line = progress_line(
                int(getattr(record, "processed", 0)),
                int(getattr(record, "assets", 0)),
                int(getattr(record, "masks", 0)),
                int(getattr(record, "failed", 0)),
                float(getattr(record, "elapsed", 0.0)),
                bar=self.tty,
            )
            if self.tty:
                self.stream.write("\r" + line)
                self._bar_shown = True
                if done >= total:
                    self.end_bar()
            elif done >= total or time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
                self.stream.write(line + "\n")
                self._last_plain = time.monotonic()
        self.stream.flush()

    def end_bar(self) -> None:
        """Finish the bar's line (the next output starts on a new line; the bar is drawn again below it)."""
        if self._bar_shown:
            self._bar_shown = False
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):  # the terminal went away
                pass


def configure_logging(verbosity: int, log_dir: Path | None, *, models: bool = False) -> Path | None:
    """Console at WARNING (``-v`` INFO, ``-vv`` DEBUG, Prefect's included), progress and stage lines through
    :class:`TerminalProgress`, everything from INFO (DEBUG with ``-vv``) into ``log_dir/maskloop.log``; returns it.
    ``models``: the command loads models, so transformers' own console handler is replaced by the log file too."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    wanted = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": logging.getLevelName(level)}
    if verbosity >= 2:
        wanted["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update({name: value for name, value in wanted.items() if before[name] is None})
    try:
        import prefect.main  # noqa: F401 - Prefect sets up logging (root's console handler) when first imported
    finally:  # only Prefect's logging set-up reads them: the process's environment stays as it was
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)

    root = logging.getLogger()
    root.setLevel(min(level, logging.INFO))
    for old in [h for h in root.handlers if getattr(h, "maskloop", False)]:  # configured before (tests, demo)
        root.removeHandler(old)
        old.close()
    if not root.handlers:  # nobody shows anything on the console: a plain handler
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(level)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        console.maskloop = True  # type: ignore[attr-defined]
        root.addHandler(console)
    path, to_file = _log_file(log_dir, min(level, logging.INFO))
    handlers: list[logging.Handler] = [to_file] if to_file is not None else []
    root.handlers.extend(handlers)
    logging.captureWarnings(True)
    if models:
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_default_handler()  # its console handler: the weight-loading reports
        if verbosity < 2:
            transformers_logging.disable_progress_bar()  # "Loading weights" bars: the run's own bar is enough
    for name in FILE_ONLY:
        noisy = logging.getLogger(name)
        noisy.handlers = list(handlers)
        noisy.propagate = verbosity >= 2  # -vv: on the console too
        noisy.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)  # their INFO is chatter
    for name in ("httpx", "botocore", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    errors = logging.getLogger(ERRORS)
    errors.handlers, errors.propagate = list(handlers), False
    progress = TerminalProgress()
    for name in (PROGRESS, STAGE):
        ours = logging.getLogger(name)
        ours.handlers = [progress, *handlers]
        ours.setLevel(logging.INFO)
        ours.propagate = False
    for shown in root.handlers:  # a warning printed while the bar is drawn starts on a line of its own
        if isinstance(shown, logging.StreamHandler) and not isinstance(shown, logging.FileHandler):
            shown.filters = [f for f in shown.filters if not isinstance(f, _EndsBar)]
            shown.addFilter(_EndsBar(progress))
            if verbosity < 2 and not isinstance(shown.formatter, _NoTraceback):  # tracebacks: file, or -vv
                shown.setFormatter(_NoTraceback(shown.formatter or logging.Formatter()))
    return path


def log_failure(message: str) -> str:
    """Record the exception being handled, with its traceback, in the log file; returns where it went."""
    errors = logging.getLogger(ERRORS)
    errors.error(message, exc_info=True)
    files = [h.baseFilename for h in errors.handlers if isinstance(h, logging.FileHandler)]
    return files[0] if files else "the log (no log file could be opened)"


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (the log file keeps them)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return text + (" (traceback in the log file; -vv shows it here)" if saved[0] else "")


class _EndsBar(logging.Filter):
    def __init__(self, progress: TerminalProgress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.end_bar()
        return True


def _log_file(log_dir: Path | None, level: int) -> tuple[Path | None, logging.Handler | None]:
    if log_dir is None:
        return None, None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "maskloop.log"
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None, None
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.maskloop = True  # type: ignore[attr-defined]
    return path, handler


@contextlib.contextmanager
def attended_runs() -> Iterator[None]:
    """Flow runs started in this block (a command at the terminal, the demo) run without Prefect's flow-run
    heartbeats, unless the user configured them (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the environment or the
    Prefect profile).

    Heartbeats let a server mark a run crashed when the process that ran it died unseen (a worker's node); here the
    person who started the command sees it end. Their cost is per run: Prefect's heartbeat thread sleeps in one-second
    steps and a synchronous flow run joins it when it ends: up to 1 s (~0.9 s) added to every short run. Runs started by a worker
    (deployments) keep Prefect's default."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
