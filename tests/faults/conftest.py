"""Fixtures of the fault suite: the flow fixtures (Prefect's test server, the tiny SAM 2, a filled bucket), the
environment a ``maskloop`` command reads, a time bound per case and the figures recorder behind
docs/reliability.md.

Each case drives real ``maskloop prelabel`` commands (in-process, as a user would) against real servers, with a
fault injected between maskloop and one server, then checks :func:`tests.faults.invariant.check_invariant`.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.flows.test_prelabel import LOOSE

CASE_LIMIT_S = 240  # a case still running after this long is a hang: dump every thread's stack and stop the run
FIGURES_ENV = "MASKLOOP_FAULTS_FIGURES"  # a JSON-lines file the cases append their measured figures to


@pytest.fixture()
def catalog_url(tmp_path: Path) -> str:
    """SQLite: the faults here are between maskloop and S3 or Label Studio (the catalog's own faults, PostgreSQL
    restarts included, are in test_catalog_faults.py on a test-owned cluster)."""
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


@pytest.fixture(autouse=True)
def bounded_case() -> Iterator[None]:
    """Every case is bounded in time (pytest-timeout is not installed): each wait in the cases has its own deadline;
    this is the backstop that turns a hang into a stack dump and a failed run instead of a stuck CI job."""
    faulthandler.dump_traceback_later(CASE_LIMIT_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass
class Figures:
    """One row of docs/reliability.md's table, as measured by a case."""

    fault: str
    where: str
    injected: int = 0  # faulted requests (or restarts, kills)
    runs_completed: int = 0
    runs_stopped: int = 0  # stopped with a named error (then a plain rerun completed)
    assets_lost: int = 0
    duplicates: int = 0
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[..., Figures]]:
    made: list[Figures] = []

    def make(fault: str, where: str) -> Figures:
        made.append(Figures(fault, where))
        return made[-1]

    yield make
    target = os.environ.get(FIGURES_ENV)
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if target and not failed:
        with open(target, "a", encoding="utf-8") as out:
            for row in made:
                out.write(json.dumps({"case": request.node.name, **asdict(row)}) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


@pytest.fixture()
def retry_lines() -> Iterator[list[str]]:
    """The retry layer's log lines (``storage.retry``, WARNING: one per failed call, recovered or given up) while the
    case runs; a handler on that logger itself, which the commands' logging set-up leaves alone."""
    handler = _Lines()
    logger = logging.getLogger("storage.retry")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def failed_attempts(lines: list[str]) -> int:
    """How many attempts failed, in all, according to the retry layer's lines."""
    recovered = sum(int(n) for n in re.findall(r"recovered after (\d+) failed attempts", "\n".join(lines)))
    gave_up = sum(int(n) for n in re.findall(r"after (\d+) attempts in", "\n".join(lines)))
    return recovered + gave_up


def slowest_recovery(lines: list[str], fallback: float | None = None) -> float | None:
    """The longest time a failing call took to recover, from the retry layer's lines (``fallback`` when none)."""
    times = [float(t) for t in re.findall(r"recovered after \d+ failed attempts in ([0-9.]+) s", "\n".join(lines))]
    return max(times) if times else fallback


def maskloop_env(monkeypatch: pytest.MonkeyPatch, settings: Any, **overrides: str) -> None:
    """The environment a ``maskloop`` command reads: ``settings`` (S3, catalog, Label Studio, model) with I/O in the
    flow's threads, and ``overrides`` (``MASKLOOP_*`` names without the prefix, e.g. ``S3_ENDPOINT_URL``)."""
    values: dict[str, Any] = {
        "DATA_DIR": settings.data_dir,
        "DATABASE_URL": settings.resolved_database_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
        "LABEL_STUDIO_URL": settings.label_studio_url,
        "LABEL_STUDIO_TOKEN": settings.label_studio_token,
        "MODEL_ID": settings.model_id,
        "DEVICE": "cpu",
        "IO_PROCESS": "false",
        **overrides,
    }
    for name, value in values.items():
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        monkeypatch.setenv(f"MASKLOOP_{name}", text)


@dataclass
class Outcome:
    """What one ``maskloop prelabel`` command did: its exit status, output and parsed summary."""

    code: int
    out: str
    err: str
    seconds: float
    run: int | None = None
    job: int | None = None
    done: int = 0
    assets: int = 0
    failed: int = 0


SUMMARY = re.compile(r"run (\d+) \(job (\d+)\): (\d+)/(\d+) assets pre-labelled, (\d+) failed")


@pytest.fixture()
def prelabel(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """``prelabel(source, *extra)``: run ``maskloop prelabel`` (2 images per batch, loose prompts) in-process."""
    from flows.cli import main

    def run(source: str, *extra: str) -> Outcome:
        loose = [arg for name, value in LOOSE.items() for arg in ("--param", f"{name}={value}")]
        capsys.readouterr()
        started = time.monotonic()
        code = main(["prelabel", source, "--batch-size", "2", *loose, *extra])
        seconds = time.monotonic() - started
        out, err = capsys.readouterr()
        outcome = Outcome(code, out, err, seconds)
        if found := SUMMARY.search(out):
            outcome.run, outcome.job, outcome.done, outcome.assets, outcome.failed = map(int, found.groups())
        return outcome

    return run
