"""End-to-end pre-label throughput (S3 → SAM 2 → Label Studio) divided by the bare model's on the same images.

    .venv/bin/python -m benchmarks.bench_prelabel --images 256 --batch 32 --threads 1

Starts the local stack's S3 server (SeaweedFS; ``--s3 moto`` for moto's), a real Label Studio and Prefect's
temporary server. The model (``--model``) defaults to the shipped ``maskloop/shapes-tiny``, whose masks are smooth
like a real model's; ``--model random`` is a tiny config with random weights, whose speckled masks make Label Studio
payloads unrealistically large. Prints images/s for the bare model (decode + auto-prompt + RLE on already-downloaded
bytes) and for the whole flow, and their ratio (goal >= 0.90).

``--threads`` is the model's torch thread count in both measurements (``MASKLOOP_CPU_THREADS`` in the flow). On a
GPU the model has its own device and the CPU feeds it; on a CPU-only machine the fair counterpart is a model on
cores - 1 threads, with the remaining core for downloads, imports and the local servers (S3, Label Studio,
Prefect), which here share the same machine. ``--threads 0`` leaves torch's default (all cores) for comparison.

``--pin-services`` (Linux) puts the local servers (S3, Label Studio, Prefect) on the last core and this process
(model and the flow's own download/import threads) on the others, in both measurements: the layout of a worker
whose services run elsewhere, so the ratio shows the pipeline's own cost, not the servers' CPU on the model's core.
On 2026-11-22 (2 cores, batch 64) it gave 0.83 against 0.85 unpinned in the same session: the servers are not what
slows the model task (38-40 s in the flow against 35 s bare); the rest of the flow's own process is.

``--repeat N`` runs N pipeline rounds (new keys each time), each between two bare runs, and prints every round's
ratio and their median: on a machine whose speed drifts, one round says little. docs/prelabel-throughput.md has
the diagnosis (GIL contention between the model thread and the download/import threads) and the figures.

``--io process,threads`` alternates rounds with the download/import bodies in the I/O helper process (the default,
``MASKLOOP_IO_PROCESS=true``) and in the flow's threads, and prints a median per mode: an A/B on the same drifting
machine. On 2026-12-03, two runs of 3 rounds per mode: 0.96 against 0.93, then 0.92 against 0.93 (helper
process against threads): within this machine's noise; docs/prelabel-throughput.md has the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--repeat", type=int, default=1, help="pipeline rounds, each between two bare runs; prints the median ratio"
    )
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument(
        "--model",
        default="maskloop/shapes-tiny",
        help="SAM 2 id or directory; 'random' = a tiny config with random weights (noisy masks, large payloads)",
    )
    parser.add_argument(
        "--s3", choices=("seaweedfs", "moto"), default="seaweedfs", help="S3 server (seaweedfs: the local stack's)"
    )
    parser.add_argument(
        "--io",
        default="process",
        help="where the download/import task bodies run: process (the I/O helper process, the default) or threads "
        "(the flow's own); a comma list alternates them round by round, an A/B on the same drifting machine",
    )
    parser.add_argument(
        "--pin-services", action="store_true", help="servers on the last core, this process on the others (Linux)"
    )
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry: nothing beyond loopback
    cores = sorted(os.sched_getaffinity(0))
    if args.pin_services:
        if len(cores) < 2:
            parser.error(f"--pin-services needs at least 2 cores, this process may use {cores}")
        os.sched_setaffinity(0, cores[:-1])  # threads started from here on inherit it
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    import torch
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks.bench_s3 import moto, seaweed
    from model.autoprompt import auto_segment
    from model.cache import get_segmenter
    from model.images import decode_image
    from model.synthetic import SyntheticDomain
    from storage.labelstudio.server import LabelStudioServer
    from storage.s3 import make_client
    from storage.settings import Settings
    from tasks.models import resolve_model_id
    from tests.support.tiny_models import save_tiny_sam2

    strategy_params = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "max_masks": 8,
    }
    domain = SyntheticDomain.scaled(args.size)
    blobs = []
    for i in range(args.images):
        buf = io.BytesIO()
        Image.fromarray(domain.image(i).image).save(buf, "PNG")
        blobs.append(buf.getvalue())

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model == "random":
            model_dir = str(save_tiny_sam2(tmp / "sam2", image_size=args.size, hidden_size=128))
        else:
            model_dir = resolve_model_id(args.model)
        if args.threads:
            torch.set_num_threads(args.threads)
        segmenter = get_segmenter(model_dir, device=None)
        auto_segment(segmenter, [decode_image(blobs[0], "warmup")], "everything", **strategy_params)  # warm-up

        def bare_rate() -> float:
            start = time.perf_counter()
            for k in range(0, len(blobs), args.batch):
                images = [decode_image(b, f"img{k + j}") for j, b in enumerate(blobs[k : k + args.batch])]
                results = auto_segment(segmenter, images, "everything", **strategy_params)
                for r in results:
                    r.to_records()
            return len(blobs) / (time.perf_counter() - start)

        bares: list[float] = []
        runs: list[dict[str, float]] = []
        s3_server = seaweed(tmp / "s3") if args.s3 == "seaweedfs" else moto(tmp / "s3")
        with (
            s3_server as s3_settings,
            LabelStudioServer(tmp / "ls") as ls,
            prefect_test_harness(server_startup_timeout=120),
        ):
            from flows.prelabel import prelabel_flow
            from storage.params import PrelabelParams

            if args.pin_services:  # every thread of every server process (affinity is per thread on Linux)
                for pid in _descendants(os.getpid()):
                    for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(int(task.name), cores[-1:])

            settings = Settings(
                data_dir=tmp / "data",
                s3_endpoint_url=s3_settings.s3_endpoint_url,
                s3_access_key_id=s3_settings.s3_access_key_id,
                s3_secret_access_key=s3_settings.s3_secret_access_key,
                label_studio_url=ls.url,
                label_studio_token=ls.token,
                model_id=model_dir,
                cpu_threads=args.threads or None,
            )
            client = make_client(settings)
            client.create_bucket(Bucket="bench")
            modes = args.io.split(",")
            if not set(modes) <= {"process", "threads"}:
                parser.error(f"--io takes process and/or threads, got {args.io!r}")
            # every bare run happens with the servers up and idle, as they are around the pipeline runs
            bares.append(bare_rate())
            for r in range(args.repeat * len(modes)):  # each round: new keys (new assets), then the bare model again
                mode = modes[r % len(modes)]
                for i, blob in enumerate(blobs):
                    client.put_object(Bucket="bench", Key=f"in{r}/{i:05d}.png", Body=blob)
                start = time.perf_counter()
                result = prelabel_flow(
                    PrelabelParams(source=f"s3://bench/in{r}/", batch_size=args.batch, strategy_params=strategy_params),
                    settings=settings.model_copy(update={"io_process": mode == "process"}),
                )
                wall = time.perf_counter() - start
                done = result.count("done")
                # bare before and after each pipeline run: their mean is fairer to a drifting machine
                bares.append(bare_rate())
                bare = (bares[-2] + bares[-1]) / 2
                model_s = float(result.timings.get("model_seconds", float("nan")))
                runs.append(
                    {
                        "bare": bare,
                        "pipeline": done / wall,
                        "wall": wall,
                        "model_s": model_s,
                        "done": done,
                        "mode": mode,
                        "io_helper_calls": result.io_helper_calls,
                    }
                )

    print(
        f"images: {args.images} at {args.size}px, batch {args.batch}, everything {args.points_per_side}x{args.points_per_side} points"
    )
    print(
        f"model threads: {torch.get_num_threads()} of {os.cpu_count()} cores; download/import tasks in {args.io}; S3: {args.s3}"
    )
    if args.pin_services:
        print(f"servers pinned to core {cores[-1]}, this process to cores {cores[:-1]}")
    for r, run in enumerate(runs):
        slower = run["model_s"] / (run["done"] / run["bare"]) - 1  # model task against the bare model's time
        print(
            f"round {r + 1} ({run['mode']}): bare model (decode + auto-prompt + RLE) {run['bare']:.2f} images/s (mean "
            f"of the runs before and after); pipeline (S3 -> SAM 2 -> catalog -> Label Studio) {run['pipeline']:.2f} "
            f"images/s, {run['done']} done, {run['model_s']:.1f} s of {run['wall']:.1f} s in the model task "
            f"({100 * slower:+.1f}% against bare), {run['io_helper_calls']} I/O calls in the helper process; "
            f"ratio {run['pipeline'] / run['bare']:.2f}"
        )
    print(f"bare model runs (images/s): {', '.join(f'{b:.2f}' for b in bares)}")
    for mode in dict.fromkeys(run["mode"] for run in runs):
        ratios = sorted(run["pipeline"] / run["bare"] for run in runs if run["mode"] == mode)
        print(
            f"ratio pipeline / bare model, I/O in {mode}: {statistics.median(ratios):.2f} median of {len(ratios)} "
            f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; goal >= 0.90)"
        )


def _descendants(root: int) -> list[int]:
    """Every live descendant process of ``root`` (from /proc)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [child for child, ppid in parent.items() if ppid == pid]
        found += kids
        frontier += kids
    return found


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
