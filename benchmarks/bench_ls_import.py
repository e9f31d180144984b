"""Label Studio bulk import throughput: tasks/s with brush pre-labels, maskloop's importer vs the SDK path.

Cases: one 640x480 brush mask per task, and ten 1080p masks per task. Also times brush RLE encoding alone
(maskloop's vectorised encoder vs ``label_studio_sdk.converter.brush.mask2rle``). Prints ratios from one run.

    python benchmarks/bench_ls_import.py [--tasks 1000] [--tasks-1080p 100] [--url URL --token TOKEN]

Without ``--url`` a throwaway server is started from the migrated template (needs scripts/install_label_studio.sh).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from model.instances import Instances
from storage.annotation.items import ImportItem
from storage.catalog import Asset, Catalog
from storage.labelstudio.brush import mask_to_brush_rle
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project


def _instances(seed: int, n: int, h: int, w: int) -> Instances:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(h // 10, h // 4)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r  # discs: realistic run counts per row
    return Instances(masks=masks, labels=["object"] * n, scores=rng.uniform(0.5, 1.0, n))


def _assets(catalog: Catalog, n: int, tag: str) -> list[int]:
    with catalog.session() as session:
        rows = [Asset(bucket="bench", key=f"{tag}/{i}", etag=str(i), size=1, media_type="image") for i in range(n)]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def bench_maskloop(client: LabelStudioClient, catalog: Catalog, n: int, masks: int, h: int, w: int, tag: str) -> float:
    project = ensure_project(client, catalog, f"bench-{tag}-{time.time():.0f}", "image", ["object"])
    ids = _assets(catalog, n, tag)
    pre = [_instances(i, masks, h, w) for i in range(n)]
    t0 = time.perf_counter()
    report = import_predictions(
        client,
        catalog,
        project,
        [ImportItem(a, f"http://127.0.0.1:9/{a}.jpg", pre[i], "bench@0/grid", 0.5) for i, a in enumerate(ids)],
    )
    dt = time.perf_counter() - t0
    assert report.created == n, report
    return n / dt


def bench_sdk(url: str, token: str, n: int, masks: int, h: int, w: int) -> float:
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.converter.brush import mask2rle

    from storage.labelstudio.config import image_label_config

    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(title=f"bench-sdk-{time.time():.0f}", label_config=image_label_config(["object"]))
    pre = [_instances(i, masks, h, w) for i in range(n)]
    t0 = time.perf_counter()
    tasks = []
    for i, inst in enumerate(pre):
        result = [
            {
                "id": f"b{k}",
                "type": "brushlabels",
                "from_name": "brush",
                "to_name": "image",
                "original_width": w,
                "original_height": h,
                "value": {
                    "format": "rle",
                    "rle": mask2rle(inst.masks[k].astype(np.uint8) * 255),
                    "brushlabels": ["object"],
                },
            }
            for k in range(masks)
        ]
        tasks.append(
            {
                "data": {"image": f"http://127.0.0.1:9/{i}.jpg"},
                "predictions": [{"model_version": "bench", "score": 0.5, "result": result}],
            }
        )
    for start in range(0, n, 500):
        ls.projects.import_tasks(id=project.id, request=tasks[start : start + 500])
    return n / (time.perf_counter() - t0)


def bench_encode(h: int, w: int, reps: int = 20) -> tuple[float, float]:
    from label_studio_sdk.converter.brush import mask2rle

    mask = _instances(1, 1, h, w).masks[0]
    t0 = time.perf_counter()
    for _ in range(reps):
        mask_to_brush_rle(mask)
    ours = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        mask2rle(mask.astype(np.uint8) * 255)
    return ours, (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--tasks-1080p", type=int, default=100)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    for h, w in ((480, 640), (1080, 1920)):
        ours, sdk = bench_encode(h, w)
        print(
            f"brush RLE encode {w}x{h}: maskloop {ours * 1e3:.2f} ms, SDK mask2rle {sdk * 1e3:.2f} ms, speedup x{sdk / ours:.1f}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.url:
            url, token = args.url, args.token
        else:
            from storage.labelstudio.server import LabelStudioServer

            server = LabelStudioServer(Path(tmp) / "ls").start()
            url, token = server.url, server.token
        try:
            catalog = Catalog(f"sqlite:///{Path(tmp) / 'catalog.sqlite'}")
            with LabelStudioClient(url, token) as client:
                rate = bench_maskloop(client, catalog, args.tasks, 1, 480, 640, "vga")
                print(
                    f"import, 1 brush mask 640x480 per task, {args.tasks} tasks: maskloop {rate:.0f} tasks/s (goal >= 300)"
                )
                if not args.skip_sdk:
                    sdk_rate = bench_sdk(url, token, args.tasks, 1, 480, 640)
                    print(
                        f"import, same via label_studio_sdk: {sdk_rate:.0f} tasks/s; ratio maskloop/SDK x{rate / sdk_rate:.2f}"
                    )
                rate = bench_maskloop(client, catalog, args.tasks_1080p, 10, 1080, 1920, "1080p")
                print(
                    f"import, 10 brush masks 1920x1080 per task, {args.tasks_1080p} tasks: maskloop {rate:.1f} tasks/s"
                )
                if not args.skip_sdk:
                    sdk_rate = bench_sdk(url, token, args.tasks_1080p, 10, 1080, 1920)
                    print(
                        f"import, same via label_studio_sdk: {sdk_rate:.1f} tasks/s; ratio maskloop/SDK x{rate / sdk_rate:.2f}"
                    )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
