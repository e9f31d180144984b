"""Reading a frozen dataset version out: ``versions export`` (any format of the exporters table, with the images
checked against their frozen sha256) and ``versions show --preview`` (a contact sheet in the run reports' colours)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.overlay import PALETTE as _PALETTE
from storage.catalog import Catalog
from storage.formats.export_layout import MANIFEST_FILE, ExportResult, plan_export
from storage.formats.exporter import CocoItems, ExportSource
from storage.formats.registry import exporter_for
from storage.version_objects import get_json
from storage.version_reads import get_version

logger = logging.getLogger(__name__)


def export_version(
    catalog: Catalog, s3: Any, version_id: int, out_dir: Path, *, fmt: str = "coco", images: bool = False
) -> ExportResult:
    """Write the version into ``out_dir`` in format ``fmt``, a name in :data:`storage.formats.registry.EXPORTERS`.

    ``coco`` is the layout of :mod:`storage.formats.export_layout`, which COCO readers (pycocotools, FiftyOne's
    ``COCODetectionDataset``) open with only the directory given: ``labels.json`` (the frozen COCO; each image's
    ``file_name`` is ``<asset id>_<object basename>`` relative to ``data/``, its S3 URI, sha256 and asset id in
    ``maskloop_s3_uri``, ``maskloop_sha256``, ``maskloop_asset_id``); ``yolo-seg`` is
    :mod:`storage.formats.yolo_seg`; ``youtube-vis`` (videos only: the merged tracks, per-frame RLE masks or
    box-only frames, track ids) is :mod:`storage.formats.youtube_vis`. Every format gets ``manifest.json`` (the frozen manifest, each item with its
    ``file_name`` and ``asset_id``). ``images`` also downloads the image assets to ``<images dir>/<file_name>``
    (the format names the folder) and checks them against the version's sha256; video frames are not written.
    Returns what was written."""
    exporter = exporter_for(fmt)
    version = get_version(catalog, version_id)
    if not version.coco_uri or not version.manifest_uri:
        raise ValueError(f"dataset version {version_id} has no stored export")
    plan = plan_export(
        get_json(s3, version.coco_uri),
        get_json(s3, version.manifest_uri),
        labels=exporter.labels,
        images_dir=exporter.images_dir,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    images_dir = out_dir / exporter.images_dir
    written: list[Path] = []
    mismatches: list[str] = []
    size = 0
    if images:
        from storage.s3 import parse_s3_uri

        images_dir.mkdir(exist_ok=True)
        for image in plan.images:
            bucket, key = parse_s3_uri(image.s3_uri)
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if image.sha256 and hashlib.sha256(body).hexdigest() != image.sha256:
                logger.warning("export: %s differs from the sha256 version %d froze", image.s3_uri, version_id)
                mismatches.append(image.file_name)
            target = images_dir / image.file_name
            target.write_bytes(body)
            written.append(target)
            size += len(body)
    classes = tuple(c["name"] for c in sorted(plan.coco.get("categories", []), key=lambda c: c["id"]))
    files = exporter.write(ExportSource(classes, CocoItems(plan.coco), plan.coco), out_dir)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(plan.manifest, indent=1))
    return ExportResult.of(
        plan,
        version_id,
        out_dir,
        exporter.labels,
        files,
        exporter.images_dir,
        images_dir if images else None,
        tuple(written),
        size,
        tuple(mismatches),
    )


# -- preview -----------------------------------------------------------------------------------------------------
def _bar_chart(
    per_class: Mapping[str, int], colors: Mapping[str, tuple[int, int, int]], width: int, row_h: int = 22
) -> Any:
    from PIL import Image, ImageDraw

    classes = list(per_class)
    img = Image.new("RGB", (width, row_h * (len(classes) + 1) + 8), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), "instances per class", fill="black")
    top = max(per_class.values(), default=0) or 1
    label_w = 120
    for i, cls in enumerate(classes):
        y = row_h * (i + 1) + 4
        n = int(per_class[cls])
        draw.text((6, y + 4), cls[:18], fill="black")
        bar = int((width - label_w - 60) * n / top)
        draw.rectangle(
            [label_w, y + 2, label_w + bar, y + row_h - 4], fill=colors.get(cls, _PALETTE[i % len(_PALETTE)])
        )
        draw.text((label_w + bar + 6, y + 4), str(n), fill="black")
    return img


def write_preview(
    catalog: Catalog, s3: Any, version_id: int, path: Path, *, samples: int = 6, thumb: int = 256
) -> Path:
    """A PNG contact sheet: up to ``samples`` images of the version with their masks drawn over them (colour by
    class), and a per-class bar chart below. Images come from S3; masks from the frozen COCO export."""
    import io

    import numpy as np
    from PIL import Image

    from storage.formats.coco import load_coco
    from storage.s3 import parse_s3_uri

    version = get_version(catalog, version_id)
    if not version.coco_uri:
        raise ValueError(f"dataset version {version_id} has no stored export")
    data = get_json(s3, version.coco_uri)
    coco = load_coco(data)
    colors = {c["id"]: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(data["categories"])}
    tiles = []
    for img in [i for i in data["images"] if "#frame=" not in i["file_name"]][:samples]:
        bucket, key = parse_s3_uri(img["file_name"])
        try:
            pixels = np.asarray(
                Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).convert("RGB"), np.float32
            )
        except Exception as exc:  # noqa: BLE001 - a missing or broken image must not sink the preview
            logger.warning("preview: cannot read %s: %s", img["file_name"], exc)
            pixels = np.full((img["height"], img["width"], 3), 127.0, np.float32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            mask = coco.annToMask(ann).astype(bool)
            pixels[mask] = 0.45 * pixels[mask] + 0.55 * np.array(colors[ann["category_id"]], np.float32)
        tile = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        scale = thumb / max(tile.size)
        tile = tile.resize(
            (max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), Image.Resampling.NEAREST
        )
        tiles.append(tile)
    cols = max(1, min(3, len(tiles)))
    rows = -(-len(tiles) // cols)
    sheet_w = max(cols * (thumb + 4), 420)
    by_name = {c["name"]: colors[c["id"]] for c in data["categories"]}
    chart = _bar_chart(version.counts.get("instances_per_class", {}), by_name, sheet_w)
    sheet = Image.new("RGB", (sheet_w, rows * (thumb + 4) + chart.height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * (thumb + 4) + 2, (i // cols) * (thumb + 4) + 2))
    sheet.paste(chart, (0, rows * (thumb + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, "PNG")
    return path
