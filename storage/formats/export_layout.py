"""The folder a dataset version is exported to, laid out so that COCO readers open it as it is.

The layout is FiftyOne's COCO detection layout, which pycocotools and most COCO loaders read too::

    DIR/labels.json      the version's COCO; each image's ``file_name`` is relative to ``data/``
    DIR/manifest.json    the version's manifest; each item also names its ``file_name`` and asset id
    DIR/data/<asset id>_<object basename>    the image files (``versions export --images``)

Other formats (:mod:`storage.formats.registry`) name their own label file and image folder; the manifest and the
image file names are the same for all of them.

The stored COCO names each image by its S3 URI; :func:`plan_export` rewrites that into a file name and keeps the
URI, the asset's sha256 and its id as extra fields of the image record (``maskloop_s3_uri``, ``maskloop_sha256``,
``maskloop_asset_id``). The asset id prefix keeps names unique when two keys share a basename (and for two revisions
of one key). Object keys are untrusted: only a cleaned basename of the key goes into a file name. A video frame has
no file of its own in the export: its ``file_name`` names the video's file and the frame (``…#frame=12``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.formats.exporter import ExportedFile

LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"
DATA_DIR = "data"
MAX_BASENAME = 100  # characters; far below the 255 bytes a path component may have
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_basename(key: str) -> str:
    """The last ``/`` part of an (untrusted) object key as a portable file name: ASCII letters, digits, ``.``, ``_``
    and ``-`` only, none of these three leading, at most :data:`MAX_BASENAME` characters with the extension kept;
    ``image`` when nothing usable is left."""
    name = _UNSAFE.sub("_", key.rsplit("/", 1)[-1]).lstrip("._-")
    if len(name) > MAX_BASENAME:
        stem, dot, ext = name.rpartition(".")
        ext = f"{dot}{ext}" if stem and len(ext) < 16 else ""
        name = name[: MAX_BASENAME - len(ext)] + ext
    return name if name.strip("._-") else "image"


def export_file_name(asset_id: int, uri: str, frame_index: int = -1) -> str:
    """``<asset id>_<basename>`` for an image, ``<asset id>_<basename>#frame=<n>`` for a video frame."""
    name = f"{int(asset_id)}_{safe_basename(uri)}"
    return name if frame_index < 0 else f"{name}#frame={frame_index}"


@dataclass(frozen=True)
class ExportImage:
    """One image file of the export: where it comes from and the name it gets under ``data/``."""

    file_name: str
    s3_uri: str
    asset_id: int
    sha256: str | None


@dataclass(frozen=True)
class ExportPlan:
    coco: dict[str, Any]  # the COCO to write as labels.json
    manifest: dict[str, Any]  # the manifest to write as manifest.json
    images: tuple[ExportImage, ...]  # one per distinct image file, in COCO order
    frame_records: int  # COCO images that are video frames (no file in the export)


def _source_of(record: Mapping[str, Any]) -> tuple[str, int]:
    """(S3 URI of the asset, frame index or -1) of a COCO image record, as stored or as exported."""
    frame = int(record.get("maskloop_frame_index", -1))
    if record.get("maskloop_s3_uri"):
        return str(record["maskloop_s3_uri"]), max(frame, -1)
    name, suffix = str(record["file_name"]), f"#frame={frame}"
    if frame >= 0 and name.endswith(suffix):
        return name[: -len(suffix)], frame
    return name, -1


def plan_export(
    coco: Mapping[str, Any], manifest: Mapping[str, Any], *, labels: str = LABELS_FILE, images_dir: str = DATA_DIR
) -> ExportPlan:
    """The export's COCO and manifest (the inputs stay untouched) and the image files to write. ``labels`` and
    ``images_dir`` are the format's label file and image folder, named in the manifest's ``export`` entry.

    Raises ``ValueError`` for an image record without ``maskloop_asset_id`` or when two different assets would get
    the same file name.
    """
    items = {str(i["key"]): i for i in manifest.get("items", [])}
    out = copy.deepcopy(dict(coco))
    files: dict[str, ExportImage] = {}
    named: dict[str, tuple[str, int]] = {}  # manifest item key -> (file name, asset id)
    frame_records = 0
    for record in out.get("images", []):
        uri, frame = _source_of(record)
        key = uri if frame < 0 else f"{uri}#frame={frame}"
        if "maskloop_asset_id" not in record:
            raise ValueError(f"COCO image {record.get('id')} ({key}) has no maskloop_asset_id")
        asset_id = int(record["maskloop_asset_id"])
        name = export_file_name(asset_id, uri, frame)
        sha = items.get(key, {}).get("asset_sha256") or record.get("maskloop_sha256")
        if frame < 0:
            known = files.setdefault(name, ExportImage(name, uri, asset_id, sha))
            if known.s3_uri != uri:
                raise ValueError(f"two assets would be exported as {name}: {known.s3_uri} and {uri}")
        else:
            frame_records += 1
        named[key] = (name, asset_id)
        record.update(file_name=name, maskloop_s3_uri=uri, maskloop_sha256=sha, maskloop_asset_id=asset_id)
    new_manifest = copy.deepcopy(dict(manifest))
    for item in new_manifest.get("items", []):
        if str(item["key"]) in named:
            item["file_name"], item["asset_id"] = named[str(item["key"])]
    new_manifest["export"] = {
        "labels": labels,
        "images_dir": f"{images_dir}/",
        "file_name": "relative to images_dir: <asset id>_<S3 object basename>; video frames <video>#frame=<n>, not written",
    }
    return ExportPlan(out, new_manifest, tuple(files.values()), frame_records)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_version`` wrote."""

    version_id: int
    out_dir: Path
    labels: Path  # the file a reader of the format opens
    manifest: Path
    images_dir: Path | None  # None: images were not requested
    image_files: tuple[Path, ...]
    image_bytes: int
    files: tuple[ExportedFile, ...]  # what the format's exporter wrote, in its words
    items: int
    image_records: int  # distinct image files the COCO names
    frame_records: int  # COCO images that are video frames (no file)
    sha256_mismatches: tuple[str, ...] = ()  # file names whose S3 bytes differ from the version's sha256
    images_name: str = DATA_DIR  # the format's image folder, relative to out_dir

    @classmethod
    def of(
        cls,
        plan: ExportPlan,
        version_id: int,
        out_dir: Path,
        labels: str,
        files: Sequence[ExportedFile],
        images_name: str,
        images_dir: Path | None,
        image_files: tuple[Path, ...],
        image_bytes: int,
        sha256_mismatches: tuple[str, ...] = (),
    ) -> ExportResult:
        """The result of writing ``plan`` into ``out_dir`` (the exporter's ``files``, ``labels`` the one a reader
        opens; ``image_files`` into ``images_dir``, which is ``out_dir / images_name`` when images were written)."""
        return cls(
            version_id=version_id,
            out_dir=out_dir,
            labels=out_dir / labels,
            manifest=out_dir / MANIFEST_FILE,
            images_dir=images_dir,
            image_files=image_files,
            image_bytes=image_bytes,
            files=tuple(files),
            items=len(plan.manifest.get("items", [])),
            image_records=len(plan.images),
            frame_records=plan.frame_records,
            sha256_mismatches=sha256_mismatches,
            images_name=images_name,
        )

    def summary_lines(self) -> list[str]:
        """Every file written, for ``maskloop versions export``."""
        lines = [f"exported version {self.version_id} to {self.out_dir}"]
        lines.extend(f"  {f.name:<15} {f.summary}" for f in self.files)
        lines.append(f"  {MANIFEST_FILE:<15} {self.items} items")
        images = self.images_name + "/"
        if self.images_dir is None:
            lines.append(f"  {images:<15} not written: --images downloads the {self.image_records} image files")
        else:
            lines.append(f"  {images:<15} {len(self.image_files)} image files, {_size(self.image_bytes)}")
        if self.frame_records:
            lines.append(
                f"  video frames    {self.frame_records} COCO images are video frames; their files are not written"
            )
        lines.extend(
            f"  sha256 mismatch {name}: S3 now holds other bytes than the version froze"
            for name in self.sha256_mismatches
        )
        return lines


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GiB"
