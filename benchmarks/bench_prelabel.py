"""End-to-end pre-label throughput (S3 → SAM 2 → Label Studio) divided by the bare model's on the same images.

    .venv/bin/python -m benchmarks.bench_prelabel --images 96 --batch 16

Starts a moto S3 server, a real Label Studio and Prefect's temporary server; the model is the tiny random SAM 2
(or --model DIR). Prints images/s for the bare model (decode + auto-prompt, already-downloaded bytes) and for the
whole flow, and their ratio (goal >= 0.90).
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--model", help="SAM 2 directory (default: tiny random config)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from prefect.testing.utilities import prefect_test_harness

    from model.autoprompt import auto_segment
    from model.cache import get_segmenter
    from model.images import decode_image
    from model.synthetic import SyntheticDomain
    from model.testing import save_tiny_sam2
    from storage.labelstudio.server import LabelStudioServer
    from storage.s3 import make_client
    from storage.settings import Settings
    from tests.support.servers import moto_s3_server

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
        model_dir = args.model or str(save_tiny_sam2(tmp / "sam2", image_size=args.size, hidden_size=128))
        segmenter = get_segmenter(model_dir, device=None)
        auto_segment(segmenter, [decode_image(blobs[0], "warmup")], "everything", **strategy_params)  # warm-up

        start = time.perf_counter()
        for k in range(0, len(blobs), args.batch):
            images = [decode_image(b, f"img{k + j}") for j, b in enumerate(blobs[k : k + args.batch])]
            results = auto_segment(segmenter, images, "everything", **strategy_params)
            for r in results:
                r.to_records()
        bare = len(blobs) / (time.perf_counter() - start)

        with (
            moto_s3_server() as url,
            LabelStudioServer(tmp / "ls") as ls,
            prefect_test_harness(server_startup_timeout=120),
        ):
            from flows.prelabel import prelabel_flow

            settings = Settings(
                data_dir=tmp / "data",
                s3_endpoint_url=url,
                s3_access_key_id="bench",
                s3_secret_access_key="bench",
                label_studio_url=ls.url,
                label_studio_token=ls.token,
                model_id=model_dir,
            )
            client = make_client(settings)
            client.create_bucket(Bucket="bench")
            for i, blob in enumerate(blobs):
                client.put_object(Bucket="bench", Key=f"in/{i:05d}.png", Body=blob)
            start = time.perf_counter()
            result = prelabel_flow(
                "s3://bench/in/", batch_size=args.batch, strategy_params=strategy_params, settings=settings
            )
            pipeline = result["done"] / (time.perf_counter() - start)

    print(
        f"images: {args.images} at {args.size}px, batch {args.batch}, everything {args.points_per_side}x{args.points_per_side} points"
    )
    print(f"bare model (decode + auto-prompt + RLE): {bare:.2f} images/s")
    print(f"pipeline (S3 -> SAM 2 -> catalog -> Label Studio): {pipeline:.2f} images/s")
    print(f"ratio pipeline / bare model: {pipeline / bare:.2f} (goal >= 0.90)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
