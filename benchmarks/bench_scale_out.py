"""Scale-out throughput: work units per minute with one and with two process workers, on the same bucket.

    .venv/bin/python -m benchmarks.bench_scale_out --units 4 --unit-size 3

Starts a moto S3 server, a real Label Studio, ``prefect server start`` and deploys ``prelabel-unit`` from
deployments/prefect.yaml through ``maskloop deploy``'s code path (on the process pool, since no GPU pool runs here).
Then, for 1 and then 2 workers: a fresh catalog (PostgreSQL when one answers at 127.0.0.1:5432, else SQLite) and a
fresh Label Studio project, ``prefect worker start`` × N, the ``prelabel`` fan-out in-process dispatching one
flow run per unit through ``run_deployment``, and the clock stops when the catalog has every unit done. The model
is the tiny random SAM 2 on one torch thread per flow run; every unit run is a new process (Prefect's process
worker), whose start-up is part of what is measured. Prints units/minute for each and their ratio.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pydantic import SecretStr

STRATEGY_PARAMS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_masks": 3}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=4, help="work units per measurement")
    parser.add_argument("--unit-size", type=int, default=3, help="images per unit")
    parser.add_argument("--batch", type=int, default=1, help="images per batch inside a unit")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from storage.labelstudio.server import LabelStudioServer
    from storage.s3 import make_client
    from storage.settings import Settings
    from tests.support.prefect_cluster import prefect_server
    from tests.support.servers import moto_s3_server
    from tests.support.tiny_models import save_tiny_sam2

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(args.units * args.unit_size):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = save_tiny_sam2(tmp / "sam2", image_size=64, hidden_size=128)
        with moto_s3_server() as s3_url, LabelStudioServer(tmp / "ls") as ls, prefect_server(tmp / "prefect") as api:
            url, server_env = api
            base = Settings(
                data_dir=tmp / "data",
                s3_endpoint_url=s3_url,
                s3_access_key_id=SecretStr("bench"),
                s3_secret_access_key=SecretStr("bench"),
                label_studio_url=ls.url,
                label_studio_token=SecretStr(ls.token),
                model_id=str(model_dir),
                device="cpu",
            )
            s3 = make_client(base)
            s3.create_bucket(Bucket="bench")
            for i, blob in enumerate(blobs):
                s3.put_object(Bucket="bench", Key=f"in/{i:05d}.png", Body=blob)
            _deploy(url, tmp)
            results = []
            for workers in (1, 2):
                with _catalog(tmp, workers) as catalog_url:
                    settings = base.model_copy(update={"database_url": catalog_url})
                    seconds = _measure(url, server_env, settings, workers, args, tmp)
                    results.append((workers, seconds, catalog_url.split(":", 1)[0]))

    print(
        f"bench_scale_out: {args.units} units x {args.unit_size} images ({args.size}px, batch {args.batch}), tiny "
        f"SAM 2 everything 4x4 on 1 torch thread per flow run, catalog {results[0][2]}, {os.cpu_count()} CPU cores"
    )
    print(f"{'workers':>8} {'units':>6} {'seconds':>8} {'units/min':>10}")
    rates = []
    for workers, seconds, _ in results:
        rates.append(args.units / seconds * 60)
        print(f"{workers:>8} {args.units:>6} {seconds:>8.1f} {rates[-1]:>10.2f}")
    print(f"ratio 2 workers / 1 worker: {rates[1] / rates[0]:.2f}")


def _deploy(url: str, tmp: Path) -> None:
    """``maskloop deploy`` of deployments/prefect.yaml's ``prelabel-unit``, moved to the process pool."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main
    from flows.deploy import REPO_ROOT

    spec = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    (unit,) = [d for d in spec["deployments"] if d["name"] == "prelabel-unit"]
    unit["work_pool"] = {"name": "maskloop-process", "job_variables": {"env": {"OMP_NUM_THREADS": "1"}}}
    spec["deployments"] = [unit]
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with temporary_settings({PREFECT_API_URL: url}):
        if main(["deploy", "--gpu-slots", "2", "--prefect-file", str(path)]) != 0:
            raise RuntimeError("maskloop deploy failed")


@contextmanager
def _catalog(tmp: Path, run: int) -> Iterator[str]:
    from tests.support.servers import postgres_available, throwaway_postgres_database

    if postgres_available():
        with throwaway_postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp / f'catalog-{run}.sqlite'}"


def _measure(url: str, server_env: dict[str, str], settings: Any, workers: int, args: Any, tmp: Path) -> float:
    """Seconds from the fan-out's start until every unit is done, with ``workers`` process workers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from sqlalchemy import select

    from flows.prelabel_fanout import prelabel_fanout_flow
    from storage.catalog import Catalog, WorkUnit
    from storage.params import FanoutParams
    from tests.support.prefect_cluster import process_worker, stop, wait_started, worker_env

    env = worker_env(server_env, settings)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(workers):
            log = tmp / f"run{workers}-w{i}.log"
            procs.append(process_worker(f"run{workers}-w{i}", env, log))
            wait_started(log, f"run{workers}-w{i}")
        start = time.perf_counter()
        with temporary_settings({PREFECT_API_URL: url}):
            params = FanoutParams(
                source="s3://bench/in/",
                unit_size=args.unit_size,
                deployment_name="prelabel-unit/prelabel-unit",
                project=f"bench-{workers}-workers",
                batch_size=args.batch,
                strategy_params=STRATEGY_PARAMS,
            )
            result = prelabel_fanout_flow(params, settings=settings)
        if len(result.units) != args.units:
            raise RuntimeError(f"expected {args.units} units, the fan-out made {result.units}")
        catalog = Catalog(settings.resolved_database_url)
        try:
            deadline = time.monotonic() + 1800
            while True:
                with catalog.session() as session:
                    statuses = list(session.scalars(select(WorkUnit.status)))
                if statuses and all(s == "done" for s in statuses):
                    return time.perf_counter() - start
                if "failed" in statuses or time.monotonic() > deadline:
                    raise RuntimeError(f"units not all done: {statuses}")
                time.sleep(0.5)
        finally:
            catalog.dispose()
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
