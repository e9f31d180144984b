"""recorded_run writes one runs row around a flow body: completed or failed, with its counts and timings."""

from __future__ import annotations

import pytest

from storage.catalog import Catalog, Run
from storage.catalog.runs import recorded_run, stage_timings


def test_a_block_that_returns_is_completed_with_its_counts_lineage_and_stage_timings(catalog: Catalog) -> None:
    with recorded_run(catalog, "prelabel", {"source": "s3://b/p"}, "fr-1", {"done": 0, "fetch_seconds": 0.0}) as run:
        run.counts["done"] = 3
        run.counts["fetch_seconds"] += 1.5
        run.lineage = ("m", "sha")
    with catalog.session() as session:
        row = session.get(Run, run.id)
        assert row is not None and row.status == "completed" and row.finished_at is not None
        assert row.counts == {"done": 3} and row.timings["fetch_seconds"] == 1.5
        assert row.timings["seconds"] >= 0 and "assets_per_s" in row.timings
        assert (row.model_id, row.checkpoint_sha256, row.flow_run_id) == ("m", "sha", "fr-1")


def test_a_block_that_raises_is_failed_and_keeps_what_was_counted(catalog: Catalog) -> None:
    with pytest.raises(RuntimeError, match="boom"), recorded_run(catalog, "harvest", {}, None) as run:
        run.counts["seen"] = 2
        raise RuntimeError("boom")
    with catalog.session() as session:
        row = session.get(Run, run.id)
        assert row is not None and (row.status, row.counts) == ("failed", {"seen": 2})


@pytest.mark.parametrize(
    ("counts", "elapsed", "timings", "left"),
    [
        ({}, 2.0, {"seconds": 2.0}, {}),
        (
            {"done": 4, "model_seconds": 1.0},
            2.0,
            {"model_seconds": 1.0, "seconds": 2.0, "assets_per_s": 2.0},
            {"done": 4},
        ),
        ({"done": 0}, 0.0, {"seconds": 0.0, "assets_per_s": 0.0}, {"done": 0}),
    ],
)
def test_stage_timings_move_out_of_the_counts(
    counts: dict[str, float], elapsed: float, timings: dict[str, float], left: dict[str, float]
) -> None:
    assert stage_timings(counts, elapsed) == timings
    assert counts == left
