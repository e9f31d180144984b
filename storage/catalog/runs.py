"""Run bookkeeping: one ``runs`` row per flow run, opened and closed by :func:`recorded_run`.

A flow body runs inside ``with recorded_run(...) as run:``; it fills ``run.counts`` as work finishes (so a crash
leaves what was counted) and may set ``run.lineage`` (model id, checkpoint sha256). On a normal exit the row is
``completed``, on an exception ``failed``; either way its counts, timings (wall time plus the ``*_seconds`` stage
times moved out of the counts) and finish time are written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from storage.catalog.db import Catalog
from storage.catalog.models import Run, utcnow


def start_run(catalog: Catalog, flow_name: str, parameters: Mapping[str, Any], flow_run_id: str | None) -> int:
    with catalog.session() as session:
        run = Run(flow_name=flow_name, flow_run_id=flow_run_id, parameters=dict(parameters), status="running")
        session.add(run)
        session.flush()
        return run.id


def finish_run(
    catalog: Catalog,
    run_id: int,
    status: str,
    counts: Mapping[str, Any],
    timings: Mapping[str, Any],
    model_id: str | None = None,
    checkpoint_sha256: str | None = None,
) -> None:
    with catalog.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        run.status, run.counts, run.timings, run.finished_at = status, dict(counts), dict(timings), utcnow()
        if model_id:
            run.model_id, run.checkpoint_sha256 = model_id, checkpoint_sha256


def stage_timings(counts: dict[str, Any], elapsed: float) -> dict[str, float]:
    """Move the ``*_seconds`` stage times out of ``counts`` into the run's timings, with the wall time and, when
    ``counts`` has ``done``, assets per second."""
    timings = {name: round(float(counts.pop(name)), 3) for name in [k for k in counts if k.endswith("_seconds")]}
    timings["seconds"] = round(elapsed, 3)
    if "done" in counts:
        timings["assets_per_s"] = round(counts["done"] / elapsed, 3) if elapsed else 0.0
    return timings


@dataclass
class RecordedRun:
    id: int
    counts: dict[str, Any] = field(default_factory=dict)
    lineage: tuple[str | None, str | None] = (None, None)
    timings: dict[str, float] = field(default_factory=dict)  # set when the block exits
    status: str = "running"


@contextmanager
def recorded_run(
    catalog: Catalog,
    flow_name: str,
    parameters: Mapping[str, Any],
    flow_run_id: str | None,
    counts: Mapping[str, Any] | None = None,
) -> Iterator[RecordedRun]:
    """A ``runs`` row around the block: ``completed`` when it exits normally, ``failed`` when it raises."""
    run = RecordedRun(start_run(catalog, flow_name, parameters, flow_run_id), dict(counts or {}))
    started = time.perf_counter()
    run.status = "failed"
    try:
        yield run
        run.status = "completed"
    finally:
        run.timings = stage_timings(run.counts, time.perf_counter() - started)
        finish_run(catalog, run.id, run.status, run.counts, run.timings, *run.lineage)
