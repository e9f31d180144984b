"""The terminal: progress lines with rate and ETA, a live bar on a TTY, plain lines elsewhere, stage lines."""

from __future__ import annotations

import io
import logging

import pytest

from flows.terminal import PROGRESS, STAGE, TerminalProgress, attended_runs, progress_line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 0, 0, 0, 0.0), "0/0 assets, 0 masks, 0 failed, 0.0 img/s, ETA ?"),
        ((10, 40, 57, 1, 5.0), "10/40 assets, 57 masks, 1 failed, 2.0 img/s, ETA 0:15"),
        ((40, 40, 99, 0, 8.0), "40/40 assets, 99 masks, 0 failed, 5.0 img/s, ETA 0:00"),
        ((1, 10001, 1, 0, 1.0), "1/10001 assets, 1 masks, 0 failed, 1.0 img/s, ETA 2:46:40"),
    ],
)
def test_progress_line_says_rate_and_time_left(args: tuple, expected: str) -> None:  # type: ignore[type-arg]
    assert progress_line(*args, bar=False) == expected
    assert progress_line(*args, width=10).endswith(expected)


def _record(name: str, msg: str = "", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_tty_draws_one_bar_in_place_and_ends_it_before_a_stage_line() -> None:
    out = io.StringIO()
    handler = TerminalProgress(out, tty=True)
    for done in (1, 2):
        handler.emit(_record(PROGRESS, done=done, total=3, processed=done * 4, assets=12, masks=done, elapsed=1.0))
    handler.emit(_record(STAGE, "import done"))
    text = out.getvalue()
    assert text.count("\r[") == 2 and text.endswith("\nimport done\n") and text.count("\n") == 2


def test_plain_output_writes_whole_lines_not_a_bar() -> None:
    out = io.StringIO()
    handler = TerminalProgress(out, tty=False)
    for done in (1, 2, 3):
        handler.emit(_record(PROGRESS, done=done, total=3, processed=done, assets=3, masks=0, elapsed=1.0))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "[" not in out.getvalue()
    assert lines[0].startswith("1/3 assets") and lines[-1].startswith("3/3 assets") and len(lines) == 2


def test_a_closed_terminal_never_fails_the_logging_call() -> None:
    out = io.StringIO()
    handler = TerminalProgress(out, tty=True)
    out.close()
    logger = logging.getLogger("maskloop.test-closed-terminal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
        logger.warning("still fine")  # handleError, not an exception into the flow
        handler.end_bar()
    finally:
        logging.raiseExceptions = raise_exceptions
        logger.removeHandler(handler)


def _runs_with_heartbeats(monkeypatch: pytest.MonkeyPatch, runs: int = 1) -> int:
    """How many of ``runs`` flow runs set up Prefect's heartbeat thread (its event template is built, synchronously,
    just before the thread starts, and only when heartbeats are on)."""
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine

    real = FlowRunEngine._build_heartbeat_event_template
    built: list[int] = []

    def build(self: FlowRunEngine, *args: object, **kwargs: object) -> object:  # type: ignore[type-arg]
        built.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FlowRunEngine, "_build_heartbeat_event_template", build)

    @flow(name="one-step")
    def one_step() -> int:
        return 1

    assert [one_step() for _ in range(runs)] == [1] * runs
    return len(built)


def test_flow_runs_started_at_the_terminal_run_without_prefect_heartbeats(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        monkeypatch.delenv(name, raising=False)
    assert _runs_with_heartbeats(monkeypatch) == 1, "Prefect's default, as in a run a worker starts"
    with attended_runs():
        assert _runs_with_heartbeats(monkeypatch, runs=2) == 0
    assert _runs_with_heartbeats(monkeypatch) == 1, "the setting is restored after the block"


def test_a_heartbeat_frequency_the_user_set_is_kept_at_the_terminal(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), attended_runs():  # as from the profile or env
        assert _runs_with_heartbeats(monkeypatch) == 1


@pytest.mark.parametrize(("command", "beats"), [("prelabel", None), ("demo", None), ("stack", 180), ("deploy", 180)])
def test_cli_runs_only_its_flow_commands_without_heartbeats(
    monkeypatch: pytest.MonkeyPatch, command: str, beats: int | None
) -> None:
    import argparse

    from prefect.settings import get_current_settings

    from flows.cli import _attended

    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        monkeypatch.delenv(name, raising=False)
    with _attended(argparse.Namespace(command=command)):
        assert get_current_settings().flows.heartbeat_frequency == beats
