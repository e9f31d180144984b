"""A dataset version made without Label Studio: images in (moto) S3, catalog rows as a harvest leaves them (project,
tasks, accepted annotations), then the real ``create_version``."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from model.instances import Instances
from storage.catalog import Annotation, AnnotationProject, AnnotationTask, Asset, Catalog
from storage.versions import CreateResult, create_version


@dataclass(frozen=True)
class MadeImage:
    """One image of the made version and the human masks frozen for it."""

    uri: str
    asset_id: int
    sha256: str
    width: int
    height: int
    masks: np.ndarray  # (N, H, W) bool
    labels: list[str]


def box_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_version(
    catalog: Catalog,
    s3: Any,
    bucket: str,
    images: dict[str, tuple[list[np.ndarray], list[str]]],
    *,
    classes: tuple[str, ...] = ("cat", "dog"),
    project_name: str = "export-test (images)",
) -> tuple[CreateResult, list[MadeImage]]:
    """Put one PNG per key of ``images`` (key -> masks, labels), record them as accepted annotations of a project
    and freeze that project as a dataset version under ``s3://bucket/datasets``."""
    made: list[MadeImage] = []
    with catalog.session() as session:
        project = AnnotationProject(
            backend_url="http://127.0.0.1:9",
            name=project_name,
            external_project_id=1,
            media_kind="image",
            classes=list(classes),
            label_config="<View/>",
        )
        session.add(project)
        session.flush()
        for i, (key, (masks, labels)) in enumerate(images.items()):
            height, width = masks[0].shape
            pixels = np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            body = buf.getvalue()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            sha = hashlib.sha256(body).hexdigest()
            asset = Asset(
                bucket=bucket,
                key=key,
                etag=f"e{i}",
                size=len(body),
                media_type="image",
                width=width,
                height=height,
                sha256=sha,
                status="done",
            )
            session.add(asset)
            session.flush()
            task = AnnotationTask(asset_id=asset.id, project_id=project.id, external_task_id=100 + i)
            session.add(task)
            session.flush()
            records = Instances(masks=np.stack(masks), labels=labels, scores=np.ones(len(masks), np.float32))
            instances = records.to_records()
            session.add(
                Annotation(
                    task_row_id=task.id,
                    external_annotation_id=1000 + i,
                    status="accepted",
                    instances=instances,
                    content_hash=hashlib.sha256(json.dumps(instances, sort_keys=True).encode()).hexdigest(),
                )
            )
            made.append(MadeImage(asset.uri, asset.id, sha, width, height, np.stack(masks), list(labels)))
    return create_version(catalog, s3, project, f"s3://{bucket}/datasets"), made
