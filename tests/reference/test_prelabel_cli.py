"""``MASKLOOP_MODEL_ID=<Meta .pt> maskloop prelabel`` as a user runs it (real S3, Label Studio, Prefect): the masks
stored in the catalog are Meta's automatic mask generator's masks for that image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from model.instances import Instances
from storage.catalog import Catalog, Prediction
from tests.reference.conftest import get_reference
from tests.reference.harness import EVERYTHING, EVERYTHING_IMAGE, SIZES, match_one_to_one, record, unpack

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_prelabel_cli_with_metas_checkpoint_stores_metas_everything_masks(
    prefect_api: str,  # noqa: F811
    settings: Any,
    s3: Any,
    bucket: str,
    label_studio_server: Any,
) -> None:
    reference = get_reference(SIZES[0])
    s3.put_object(Bucket=bucket, Key="photos/" + EVERYTHING_IMAGE.name, Body=EVERYTHING_IMAGE.read_bytes())
    database = f"sqlite:///{settings.data_dir}/catalog.db"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MASKLOOP_DATA_DIR": str(settings.data_dir),
        "MASKLOOP_DATABASE_URL": database,
        "MASKLOOP_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "MASKLOOP_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),
        "MASKLOOP_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "MASKLOOP_LABEL_STUDIO_URL": label_studio_server.url,
        "MASKLOOP_LABEL_STUDIO_TOKEN": label_studio_server.token,
        "MASKLOOP_MODEL_ID": str(reference.checkpoint),
        "MASKLOOP_DEVICE": "cpu",
    }
    params = {
        "points_per_side": EVERYTHING["points_per_side"],
        "pred_iou_thresh": EVERYTHING["pred_iou_thresh"],
        "stability_score_thresh": EVERYTHING["stability_score_thresh"],
        "nms_thresh": EVERYTHING["box_nms_thresh"],
    }
    argv = [sys.executable, "-m", "flows.cli", "prelabel", f"s3://{bucket}/photos/", "--project", f"ref-{bucket[-6:]}"]
    argv += [arg for name, value in params.items() for arg in ("--param", f"{name}={value}")]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with Catalog(database).session() as session:
        rows = session.scalars(select(Prediction)).all()
        assert len(rows) == 1
        records, model_version = rows[0].instances, rows[0].model_version
    assert model_version.startswith("sam2.1_hiera_tiny@")
    width, height = Image.open(EVERYTHING_IMAGE).size
    ours = Instances.from_records(records, height, width)
    theirs = unpack(reference.meta["everything/0/masks"], width)
    ious = match_one_to_one(ours.masks, theirs)
    matched = float(np.mean(ious >= 0.98))
    record("tiny", "cli", "maskloop prelabel", meta_masks=len(theirs), stored_masks=len(ours), matched_at_098=matched)
    assert len(ours) == len(theirs)
    assert matched >= 0.99, f"{matched:.3f} of Meta's masks matched by a stored mask at IoU >= 0.98"
