"""The pre-label pipeline's own ceiling: the real flow and servers around a model STAND-IN of known speed.

    .venv/bin/python -m benchmarks.bench_ceiling --images 256 --rounds 3

On a GPU worker the model runs tens of images per second and what limits a run is the pipeline's own CPU work per
image (download, decode, RLE, catalog, Label Studio payloads) and its fixed cost per run. To measure that without a
GPU, the model is replaced *in this process only* by ``StandInModel``: per batch it sleeps ``batch / speed`` seconds
(``time.sleep`` releases the GIL, as a GPU kernel does) and returns the masks the shipped model
(``maskloop/shapes-tiny``, everything mode, ``--points-per-side`` points, no score filter: ~50 masks per photo)
computed for the same photo beforehand (cached in ``--masks-cache``; the first invocation spends minutes on it).
It is injected by monkeypatching ``tasks.models.Models.load``; the product has no hook for it.

Everything else is real: ``flows.prelabel.prelabel_flow`` against S3 (SeaweedFS, or ``--s3 moto``), a real Label
Studio and Prefect's temporary server, with the I/O helper process as configured by default. The photos are
``../shared/data/coco128-seg`` JPEGs (mostly 640x480; ``--unique`` of them, cycled under new keys to ``--images``).

Prints, median (and range) of ``--rounds`` rounds per stand-in speed (rounds interleave the speeds, so machine
drift hits all of them alike):
* end-to-end images/s and its ratio to the stand-in's speed; the ceiling is the images/s with an infinitely fast
  stand-in (``inf``);
* the fixed cost per run: wall time of a one-image run with the infinitely fast stand-in;
* CPU seconds per image per stage: the stage bodies (``StageReport.cpu_seconds``: the body's own thread), the I/O
  helper's other threads (parallel downloads, the pipe), the flow process's other threads (Prefect task machinery,
  events, logs), and each server process (S3, Label Studio, Prefect). The stand-in's own CPU is left out.

``--variants new,old`` alternates the flow as it is with the pipeline's old structure (imports one after another,
the model thread decoding its batch and waiting for its COCO RLE and catalog write), put back in this process only
(``--variants new,decode-on-model-thread``: only the decode moved back); ``--empty-runs``
times an empty Prefect flow on the same server (Prefect's own floor per run), without and with Prefect's flow-run
heartbeats; ``--profile`` writes cProfile stats of the one-image runs. Flows run as ``maskloop prelabel`` runs them
(``flows.terminal.attended_runs``: no flow-run heartbeats); ``--heartbeats`` keeps Prefect's default, as in a run a
worker starts.

On 2026-12-06 (2 cores shared with other agents, load 4-10): ceiling 3.4 images/s, the same at every stand-in
speed; 0.17 CPU-s per photo in the worker (flow + I/O helper), 0.28 with the servers; fixed cost 3.8 s per run.
After the second pass the same day: fixed cost ~1.2 s (an empty flow: ~1.2 s, Prefect's heartbeat join), 0.34-0.42
worker CPU-s per run instead of 1.4-1.5; the model thread's time beside the model 17-28 ms per photo instead of 64-113.
After the fourth pass (quiet machine, 256 photos): ceiling 16.5-18.8 images/s, ~0.047 worker CPU-s per photo, ~0.09
with the servers; fixed cost 0.46-0.76 s per run (an empty flow without heartbeats: ~0.1 s). After the fifth pass
(the decode in its own thread): ratio 0.940 at 10 images/s (0.910 with ``decode-on-model-thread``), 0.60 at 30.
docs/prelabel-throughput.md has the tables, what limits the rate and the cores a GPU worker needs.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SPEEDS = ("10", "30", "100", "300", "inf")
HZ = os.sysconf("SC_CLK_TCK")


MASKS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maskloop" / "bench_ceiling.json"


def photo_paths(data: Path, unique: int) -> list[Path]:
    """The first ``unique`` coco128-seg photos under the shared data folder."""
    return sorted(Path(p) for p in glob.glob(str(data / "coco128-seg" / "images" / "*" / "*.jpg")))[:unique]


def strategy_params(points_per_side: int) -> dict[str, Any]:
    """Everything mode without a score filter: ~50 masks per photo."""
    return {"points_per_side": points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def photo_key(image: np.ndarray) -> str:
    """A cheap identity of a decoded photo (a strided sample of its pixels): how the stand-in finds its masks."""
    return hashlib.blake2b(image[::7, ::7].tobytes() + repr(image.shape).encode(), digest_size=16).hexdigest()


@dataclass
class StandInModel:
    """A MODEL STAND-IN for benchmarks only: sleeps ``len(batch) / speed`` s per batch (GIL released) and returns
    the precomputed masks of each photo. ``cpu_seconds`` is its own CPU, left out of the pipeline's figures."""

    masks: dict[str, Any]  # photo_key -> Instances
    model_id: str
    checkpoint_sha256: str
    speed: float = math.inf
    cpu_seconds: float = 0.0
    slept: float = 0.0
    calls: int = 0

    # what tasks.prelabel reads of a loaded Models
    @property
    def segmenter(self) -> StandInModel:
        return self

    def predictor(self, params: Any) -> Any:
        from storage.prelabel.predict import Predictor

        def video(path: Path) -> Any:
            raise NotImplementedError("the benchmark stand-in segments photos only")

        return Predictor(self.images, video)

    def images(self, batch: list[np.ndarray]) -> list[Any]:
        start = time.thread_time()
        out = [self.masks[photo_key(img)] for img in batch]
        self.cpu_seconds += time.thread_time() - start
        self.calls += 1
        if math.isfinite(self.speed):
            start = time.perf_counter()
            time.sleep(len(batch) / self.speed)
            self.slept += time.perf_counter() - start
        return out


def precompute_masks(paths: list[Path], params: dict[str, Any], cache: Path, threads: int) -> dict[str, Any]:
    """The shipped model's masks for each photo (COCO RLE records, cached in ``cache``), as Instances by photo_key."""
    from model.images import decode_image
    from model.instances import Instances

    stored: dict[str, Any] = json.loads(cache.read_text()) if cache.exists() else {}
    tag = json.dumps(params, sort_keys=True)
    images = {p.name: decode_image(p.read_bytes(), str(p)) for p in paths}
    todo = [name for name in images if f"{name} {tag}" not in stored]
    if todo:
        import torch

        from model.autoprompt import auto_segment
        from model.cache import get_segmenter
        from tasks.models import resolve_model_id

        torch.set_num_threads(threads)
        segmenter = get_segmenter(resolve_model_id("maskloop/shapes-tiny"), device=None)
        logging.warning("computing the shipped model's masks of %d photos once (cached in %s)", len(todo), cache)
        for k in range(0, len(todo), 8):
            names = todo[k : k + 8]
            results = auto_segment(segmenter, [images[n] for n in names], "everything", **params)
            for name, inst in zip(names, results, strict=True):
                stored[f"{name} {tag}"] = inst.to_records()
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored))
    out = {}
    for name, image in images.items():
        out[photo_key(image)] = Instances.from_records(stored[f"{name} {tag}"], *image.shape[:2])
    return out


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def server_processes(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` named by the server it belongs to (its ancestor that is our direct child)."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
    names: dict[int, str] = {}
    for pid in parent:
        top, p = None, pid
        while p in parent and p != root:
            top, p = p, parent[p]
        if p != root or top is None:
            continue
        line = cmd.get(top, "")
        names[pid] = (
            "S3 server"
            if ("weed" in line or "moto" in line)
            else "Label Studio"
            if "label" in line
            else "Prefect server"
            if ("prefect" in line or "uvicorn" in line)
            else "other: " + line[:40]
        )
    return names


@dataclass
class Round:
    speed: str
    variant: str
    images: int
    wall: float
    ratio: float
    rate: float
    cpu: dict[str, float] = field(default_factory=dict)  # per image
    model_thread: float = 0.0  # seconds per image the model thread spent on other things than the model


def heartbeats_on() -> Any:
    """Prefect's default flow-run heartbeat frequency, as in a run a worker starts."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(restore_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256, help="images per run (the photos cycled under new keys)")
    parser.add_argument("--unique", type=int, default=32, help="distinct coco128 photos (masks precomputed once)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speeds", default=",".join(SPEEDS), help="stand-in images/s; inf = no sleep")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--fixed-runs", type=int, default=3, help="one-image runs for the fixed cost per run")
    parser.add_argument(
        "--variants",
        default="new",
        help="comma list, rounds alternate (an A/B in one invocation): 'new' (the flow as it is), "
        "'decode-on-model-thread' (the model thread queries and decodes its batch itself, as before the fifth pass), "
        "'serial-imports' (each import waits for the previous one), 'old' (both, and the model thread also waits "
        "for the COCO RLE and catalog write of its batch: the pipeline's structure before 2026-12-06)",
    )
    parser.add_argument("--empty-runs", type=int, default=3, help="runs of an empty flow: Prefect's own floor")
    parser.add_argument(
        "--heartbeats",
        action="store_true",
        help="keep Prefect's flow-run heartbeats on, as in a run a worker starts (the default runs flows as "
        "`maskloop prelabel` does: flows.terminal.attended_runs)",
    )
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the one-image runs (the flow's thread)")
    parser.add_argument("--s3", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared real-media folder")
    parser.add_argument("--masks-cache", type=Path, default=MASKS_CACHE)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    speeds = args.speeds.split(",")
    variants = args.variants.split(",")
    paths = photo_paths(args.data, args.unique)
    if not paths:
        parser.error(f"no photos under {args.data / 'coco128-seg'}")
    params = strategy_params(args.points_per_side)
    masks = precompute_masks(paths, params, args.masks_cache, threads=max(1, (os.cpu_count() or 2) - 1))
    blobs = [p.read_bytes() for p in paths]
    per_photo = statistics.mean(len(m) for m in masks.values())

    from prefect.testing.utilities import prefect_test_harness

    import tasks.models
    import tasks.prelabel
    from benchmarks.bench_s3 import moto, seaweed
    from flows.terminal import attended_runs
    from model.loading import checkpoint_identity
    from storage.labelstudio.server import LabelStudioServer
    from storage.s3 import make_client
    from storage.settings import Settings

    model_dir = tasks.models.resolve_model_id("maskloop/shapes-tiny")
    stand_in = StandInModel(masks, *checkpoint_identity(model_dir))
    tasks.models.Models.load = classmethod(lambda cls, settings, model_id, strategy: stand_in)  # type: ignore[method-assign, assignment, misc]

    reports: list[tuple[str, bool, Any]] = []  # (stage, ran in the helper process, StageReport)
    real_timed = tasks.prelabel._timed

    def timed(call: Any, fn: Any, *args: Any) -> Any:
        in_child = bool(getattr(getattr(call, "__self__", None), "ready", False))
        report = real_timed(call, fn, *args)
        stage = {"store": "predict:store", "prepare": "prepare"}.get(fn.__name__, fn.__module__.rsplit(".", 1)[-1])
        reports.append((stage, in_child, report))
        return report

    tasks.prelabel._timed = timed  # type: ignore[assignment]

    rounds: list[Round] = []
    fixed: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        s3_server = seaweed(tmp / "s3") if args.s3 == "seaweedfs" else moto(tmp / "s3")
        with (
            s3_server as s3_settings,
            LabelStudioServer(tmp / "ls") as ls,
            prefect_test_harness(server_startup_timeout=120),
            contextlib.nullcontext() if args.heartbeats else attended_runs(),
        ):
            from flows.prelabel import prelabel_flow
            from storage.params import PrelabelParams

            settings = Settings(
                data_dir=tmp / "data",
                s3_endpoint_url=s3_settings.s3_endpoint_url,
                s3_access_key_id=s3_settings.s3_access_key_id,
                s3_secret_access_key=s3_settings.s3_secret_access_key,
                label_studio_url=ls.url,
                label_studio_token=ls.token,
                model_id=model_dir,
            )
            client = make_client(settings)
            client.create_bucket(Bucket="bench")
            counter = iter(range(10**6))

            import flows.prelabel

            overlapped, store_thread = flows.prelabel.import_batch, flows.prelabel.store_thread
            prepare_thread = flows.prelabel.prepare_thread

            class SerialImports:  # the old chain: every import waits for the one before (wait_for the last)
                last: Any = None

                def submit(self, *args: Any, wait_for: Any = (), **kwargs: Any) -> Any:
                    after = [SerialImports.last] if SerialImports.last is not None else list(wait_for)
                    SerialImports.last = overlapped.submit(*args, wait_for=after, **kwargs)
                    return SerialImports.last

            from prefect import flow

            @flow(name="empty")
            def empty_flow() -> None:
                return None

            empty: list[float] = []
            beating: list[float] = []  # the same with Prefect's heartbeats on, alternating
            for _ in range(args.empty_runs):
                for times, settings_context in ((empty, contextlib.nullcontext()), (beating, heartbeats_on())):
                    with settings_context:
                        start = time.perf_counter()
                        empty_flow()
                        times.append(time.perf_counter() - start)

            class StoreOnModelThread(ThreadPoolExecutor):  # the old predict stage: RLE, catalog rows, then the model
                def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                    future = super().submit(fn, *args, **kwargs)
                    future.exception()
                    return future

            @dataclass
            class OnResult:  # a future that runs its call when asked for the result, in the asking thread
                call: Any

                def result(self) -> Any:
                    return self.call()

            class PrepareOnModelThread(ThreadPoolExecutor):  # the old model thread: it decoded its own batch first
                def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                    return OnResult(lambda: fn(*args, **kwargs))

            def run(speed: str, n: int, variant: str = "new") -> tuple[Round, Any]:
                SerialImports.last = None
                serial = variant in ("serial-imports", "old")
                decode_inline = variant in ("decode-on-model-thread", "old")
                flows.prelabel.import_batch = SerialImports() if serial else overlapped  # type: ignore[assignment]
                flows.prelabel.store_thread = (lambda: StoreOnModelThread(1)) if variant == "old" else store_thread  # type: ignore[assignment]
                flows.prelabel.prepare_thread = (  # type: ignore[assignment]
                    (lambda: PrepareOnModelThread(1)) if decode_inline else prepare_thread
                )
                prefix = f"in{next(counter)}/"
                for i in range(n):
                    client.put_object(Bucket="bench", Key=f"{prefix}{i:05d}.jpg", Body=blobs[i % len(blobs)])
                stand_in.speed, stand_in.cpu_seconds, stand_in.slept = float(speed), 0.0, 0.0
                reports.clear()
                servers = server_processes(os.getpid())
                before = {pid: proc_cpu(pid) for pid in servers}
                self0 = resource.getrusage(resource.RUSAGE_SELF)
                kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                result = prelabel_flow(
                    PrelabelParams(source=f"s3://bench/{prefix}", batch_size=args.batch, strategy_params=params),
                    settings=settings,
                )
                wall = time.perf_counter() - start
                self1 = resource.getrusage(resource.RUSAGE_SELF)
                kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                done = result.count("done")
                if done != n:
                    raise RuntimeError(f"run of {n} images at {speed}/s: {done} done, counts {result.counts}")
                own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
                helper = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
                cpu: dict[str, float] = defaultdict(float)
                model_thread = -stand_in.slept
                for stage_fn, in_child, report in reports:
                    stage = stage_fn.split(":")[0]
                    cpu[f"{stage} stage body"] += report.cpu_seconds
                    if (
                        stage_fn == "predict"
                        or (stage_fn == "predict:store" and variant == "old")
                        or (stage_fn == "prepare" and decode_inline)
                    ):
                        model_thread += report.seconds  # the model thread ran it, or waited for it
                    if stage == "predict":
                        continue
                    if in_child:
                        helper -= report.cpu_seconds
                    else:
                        own -= report.cpu_seconds
                cpu["predict stage body"] -= stand_in.cpu_seconds
                own -= cpu["predict stage body"] + stand_in.cpu_seconds
                cpu["I/O helper, other threads (downloads, pipe)"] = helper
                cpu["flow process, other threads (Prefect, tasks)"] = own
                for pid, name in servers.items():
                    cpu[name] += proc_cpu(pid) - before[pid]
                rate = n / wall
                per_image = {k: v / n for k, v in cpu.items()}
                return Round(speed, variant, n, wall, rate / float(speed), rate, per_image, model_thread / n), result

            profiler = None
            for k in range(args.fixed_runs):  # also the warm-up: Label Studio project, job, first imports
                if args.profile and k == 1:  # after the first run, which creates the project and the job
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                one, result = run("inf", 1)
                worker_cpu = sum(v for k, v in one.cpu.items() if "stage body" in k or "other threads" in k)
                fixed.append((one.wall, float(result.timings.get("seconds", math.nan)), worker_cpu))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            for _ in range(args.rounds):
                for speed in speeds:
                    for variant in variants:
                        rounds.append(run(speed, args.images, variant)[0])
                        logging.warning("%s/s, %s: %.1f images/s", speed, variant, rounds[-1].rate)

    print(
        f"{args.images} images per run ({len(paths)} coco128 photos cycled, {per_photo:.0f} masks per photo from "
        f"shapes-tiny), batch {args.batch}, S3 {args.s3}; {os.cpu_count()} cores; median (range) of {args.rounds} "
        "rounds. Measured on a machine shared with other work: read medians, not single rounds."
    )
    print(
        "\n| stand-in images/s | variant | end-to-end images/s | ratio to the stand-in | worker CPU ms per image | model thread ms per image |"
    )
    print("|---|---|---|---|---|---|")
    worker = [k for k in dict.fromkeys(k for r in rounds for k in r.cpu) if "stage body" in k or "other threads" in k]
    for speed in speeds:
        for variant in variants:
            rs = [r for r in rounds if r.speed == speed and r.variant == variant]
            ratio = _mr([r.ratio for r in rs], 3) if speed != "inf" else "-"
            cpu_ms = _mr([1000 * sum(r.cpu.get(k, 0) for k in worker) for r in rs], 1)
            model = _mr([1000 * r.model_thread for r in rs], 1)
            print(f"| {speed} | {variant} | {_mr([r.rate for r in rs])} | {ratio} | {cpu_ms} | {model} |")
    for variant in variants:
        inf = [r.rate for r in rounds if r.speed == "inf" and r.variant == variant]
        print(f"\nceiling (stand-in infinitely fast, {variant}): {_mr(inf)} images/s")
    print(
        f"Prefect's own floor (an empty flow run, same server): {_mr(empty, 2)} s "
        f"{'with' if args.heartbeats else 'without'} flow-run heartbeats, {_mr(beating, 2)} s with Prefect's default"
    )
    print(
        f"fixed cost per run (one image, infinitely fast stand-in): {_mr([w for w, _, _ in fixed], 2)} s wall, of which "
        f"{_mr([s for _, s, _ in fixed], 2)} s inside the flow body (the rest: Prefect's flow-run start and end); "
        f"worker CPU (flow + helper, servers not counted) {_mr([c for _, _, c in fixed], 2)} s per run"
    )
    names = list(dict.fromkeys(k for r in rounds for k in r.cpu))
    print("\nCPU ms per image (median over all rounds and speeds, range)\n| where | ms per image |\n|---|---|")
    for name in names:
        print(f"| {name} | {_mr([1000 * r.cpu.get(name, 0.0) for r in rounds], 1)} |")
    print(
        f"| **worker total (flow + helper)** | {_mr([1000 * sum(r.cpu.get(k, 0) for k in worker) for r in rounds], 1)} |"
    )
    print(f"| **everything** | {_mr([1000 * sum(r.cpu.values()) for r in rounds], 1)} |")
    if rounds:
        per_image = statistics.median(sum(r.cpu.get(k, 0) for k in worker) for r in rounds)
        cores = os.cpu_count() or 1
        print(
            f"\nestimate, not measured: with Label Studio, S3 and Prefect on other machines, {cores} cores of worker "
            f"could pass at most {cores / per_image:.0f} images/s ({1000 * per_image:.0f} worker CPU-ms per image); "
            f"one flow's busiest process is its bound below that (see docs/prelabel-throughput.md)"
        )


def _mr(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
