"""What every training loop here shares: run progress under a step and time budget, the learning-rate schedule and
the metrics log."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def run_progress(step: int, steps: int, started: float, budget_s: float | None) -> float:
    """Fraction of the run done, in [0, 1]: by steps, or by elapsed time (since ``started``, monotonic) when a
    budget is set and that is further along."""
    p = step / steps
    if budget_s is not None:
        p = max(p, (time.monotonic() - started) / budget_s)
    return min(p, 1.0)


def cosine_lr(base: float, step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then cosine decay from ``base`` to ``min_ratio * base`` as
    ``progress`` goes from 0 to 1."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return base * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def row_head(step: int, started: float, lr: float, losses: list[float]) -> dict[str, float]:
    """The fields every evaluation row starts with: step, minutes since ``started`` (monotonic), lr, mean train
    loss since the last row (NaN when none)."""
    return {
        "step": float(step),
        "minutes": (time.monotonic() - started) / 60,
        "lr": lr,
        "train_loss": float(sum(losses) / len(losses)) if losses else float("nan"),
    }


def log_row(path: Path, history: list[dict[str, float]], row: dict[str, float]) -> None:
    """Keep one evaluation row in ``history`` and append it to the run's ``metrics.jsonl``."""
    history.append(row)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
