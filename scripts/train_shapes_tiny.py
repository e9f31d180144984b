"""Train the offline demo model ``maskloop/shapes-tiny`` on this machine (one CPU thread by default).

    nohup .venv/bin/python scripts/train_shapes_tiny.py --until 02:52 > /tmp/shapes-tiny.log 2>&1 &
    nohup .venv/bin/python scripts/train_shapes_tiny.py --recipe shapes-tiny-continue --base /tmp/stage1 \
        --threads 2 --until 06:22 > /tmp/shapes-tiny-2.log 2>&1 &
    nohup .venv/bin/python scripts/train_shapes_tiny.py --recipe shapes-tiny-video --base /tmp/image-best \
        --until 04:00 > /tmp/shapes-tiny-video.log 2>&1 &

The image recipe (``shapes-tiny``) trains from scratch, and ``shapes-tiny-continue`` continues it (stage 2) from
``--base`` (default: the shipped checkpoint; copy it out first, as the best checkpoint is written over it); the video
recipe (``shapes-tiny-video``) trains the memory path of ``--base`` (default: the shipped checkpoint) with its image
parts frozen. The best checkpoint (by held-out
prompt IoU, or video J) is written to ``--best-dir`` (default ``model/weights/shapes-tiny``) each time it improves;
``metrics.jsonl`` in ``--out-dir`` holds the curve.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _seconds_until(hhmm: str) -> float:
    now = dt.datetime.now(dt.UTC)
    h, m = (int(v) for v in hhmm.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if end <= now:
        end += dt.timedelta(days=1)
    return (end - now).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe", choices=("shapes-tiny", "shapes-tiny-continue", "shapes-tiny-video"), default="shapes-tiny"
    )
    parser.add_argument("--base", type=Path, help="continue and video recipes: the checkpoint to start from")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/maskloop-runs/shapes-tiny"))
    parser.add_argument("--best-dir", type=Path, default=ROOT / "model" / "weights" / "shapes-tiny")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--budget-s", type=float, help="wall-clock training budget in seconds")
    group.add_argument("--until", help="stop training by this UTC time, HH:MM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--best-to-beat", type=float, default=-1.0, help="keep the checkpoint in --best-dir unless beaten"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    budget = args.budget_s if args.budget_s is not None else _seconds_until(args.until)
    from model.finetune.recipes import BASED_RECIPES, run_recipe

    extra = {"base": args.base} if args.base is not None else {}
    if args.base is not None and args.recipe not in BASED_RECIPES:
        parser.error(f"--base is for the {' and '.join(sorted(BASED_RECIPES))} recipes")
    result = run_recipe(
        args.recipe,
        args.out_dir,
        budget_s=budget,
        seed=args.seed,
        best_dir=args.best_dir,
        num_threads=args.threads,
        best_to_beat=args.best_to_beat,
        **extra,
    )
    print(f"done: {result.steps} steps in {result.seconds / 60:.1f} min; best {result.best_metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
