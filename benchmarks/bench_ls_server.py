"""Label Studio's own CPU per imported photo: the server as maskloop starts it against Label Studio's stock settings.

    .venv/bin/python -m benchmarks.bench_ls_server --rounds 9 --photos 16

Two servers run side by side from the same template: one started as ``LabelStudioServer`` starts it (the settings
module of ``storage/labelstudio/server_settings.py``: Label Studio's settings less the analytics middleware that
parses every request body), one on Label Studio's stock settings. Each round posts the same import body to both, in
alternating order: ``--photos`` tasks, each a real photo's pre-labels (the shipped model's ~50 masks per
``../shared/data/coco128-seg`` photo, everything mode, no score filter: the masks of ``benchmarks.bench_ceiling``,
same cache) as brush RLE. Prints Label Studio's CPU ms per photo (its process's user + system time around the
request), median (range) of the rounds, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import httpx

from benchmarks.bench_ceiling import DATA, MASKS_CACHE, photo_paths, precompute_masks, proc_cpu, strategy_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--photos", type=int, default=16, help="tasks per import request")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--masks-cache", type=Path, default=MASKS_CACHE)
    args = parser.parse_args()

    from storage.annotation.items import ImportItem
    from storage.labelstudio import server as ls_server
    from storage.labelstudio.config import LabelConfig, image_label_config
    from storage.labelstudio.payload import results_for, task_json

    paths = photo_paths(args.data, 32)
    if not paths:
        parser.error(f"no photos under {args.data / 'coco128-seg'}")
    masks = list(
        precompute_masks(
            paths, strategy_params(8), args.masks_cache, threads=max(1, (os.cpu_count() or 2) - 1)
        ).values()
    )
    label_config = image_label_config(["object"])
    config = LabelConfig.parse(label_config)
    blobs = []
    for i in range(args.photos):
        item = ImportItem(i + 1, f"http://127.0.0.1:9/{i}.jpg", masks[i % len(masks)], "bench@0/grid", 0.5)
        blobs.append(task_json(item, results_for(item, config), config.data_key))
    body = b"[" + b",".join(blobs) + b"]"
    per_photo_masks = statistics.mean(len(masks[i % len(masks)]) for i in range(args.photos))

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = {"maskloop": stack.enter_context(ls_server.LabelStudioServer(Path(tmp) / "maskloop"))}
        with mock.patch.object(ls_server, "settings_env", lambda data_dir, pythonpath: {}):
            servers["stock"] = stack.enter_context(ls_server.LabelStudioServer(Path(tmp) / "stock"))
        clients: dict[str, httpx.Client] = {}
        projects: dict[str, int] = {}
        pids: dict[str, int] = {}
        for name, server in servers.items():
            client = stack.enter_context(
                httpx.Client(base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=600)
            )
            created = client.post("/api/projects/", json={"title": "bench", "label_config": label_config})
            created.raise_for_status()
            assert server.pid is not None
            clients[name], projects[name], pids[name] = client, created.json()["id"], server.pid

        def post(name: str) -> float:
            before = proc_cpu(pids[name])
            answer = clients[name].post(
                f"/api/projects/{projects[name]}/import", content=body, headers={"Content-Type": "application/json"}
            )
            answer.raise_for_status()
            return (proc_cpu(pids[name]) - before) / args.photos * 1000

        for name in servers:  # warm-up: first imports pay for lazy imports and caches
            post(name)
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(args.rounds):
            for name in list(servers)[:: 1 if r % 2 == 0 else -1]:
                cpu[name].append(post(name))

    print(
        f"{args.photos} photos per import ({per_photo_masks:.0f} masks per photo, {len(body) / args.photos / 1e3:.0f} KB "
        f"of JSON per photo), {args.rounds} rounds alternating; Label Studio CPU ms per photo, median (range):"
    )
    for name, values in cpu.items():
        print(f"  {name:9s} {statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})")
    print(f"  maskloop / stock: {statistics.median(cpu['maskloop']) / statistics.median(cpu['stock']):.3f}")


if __name__ == "__main__":
    main()
