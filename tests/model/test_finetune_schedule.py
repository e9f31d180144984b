import json
import time

import pytest

from model.finetune.schedule import cosine_lr, log_row, row_head, run_progress


@pytest.mark.parametrize(
    ("step", "progress", "warmup", "expected"),
    [
        (0, 0.0, 10, 0.1),  # first warm-up step: 1/10 of the base
        (9, 0.0, 10, 1.0),  # warm-up done, cosine at its start
        (50, 0.5, 10, 0.55),  # half-way: half-way between base and the floor
        (99, 1.0, 10, 0.1),  # the end: min_ratio x base
        (0, 0.0, 0, 1.0),  # no warm-up
    ],
)
def test_cosine_lr_table(step, progress, warmup, expected):
    assert cosine_lr(1.0, step, progress, warmup, 0.1) == pytest.approx(expected)


def test_run_progress_counts_steps_or_time_whichever_is_further_and_stops_at_one():
    now = time.monotonic()
    assert run_progress(25, 100, now, None) == pytest.approx(0.25)
    assert run_progress(25, 100, now - 50.0, 100.0) == pytest.approx(0.5, abs=0.01)
    assert run_progress(200, 100, now, None) == 1.0


def test_log_row_keeps_and_appends_each_row(tmp_path):
    history: list[dict[str, float]] = []
    for step in (1.0, 2.0):
        log_row(tmp_path / "metrics.jsonl", history, {"step": step})
    assert history == [{"step": 1.0}, {"step": 2.0}]
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == history


def test_row_head_averages_the_losses_since_the_last_row_and_is_nan_without_any():
    row = row_head(7, time.monotonic(), 1e-3, [1.0, 3.0])
    assert (row["step"], row["lr"], row["train_loss"]) == (7.0, 1e-3, 2.0) and row["minutes"] >= 0
    assert (
        row_head(0, time.monotonic(), 1e-3, [])["train_loss"] != row_head(0, time.monotonic(), 1e-3, [])["train_loss"]
    )
