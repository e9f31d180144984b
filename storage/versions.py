"""Immutable, content-addressed dataset versions of harvested annotations.

A version freezes an annotation project's current accepted annotations: its manifest hash is the sha256 of the
canonical sorted ``[asset sha256, annotation hash]`` list, so creating a version from unchanged data returns the
existing one. The COCO export and the manifest JSON go to S3 under content-addressed keys *before* the version row
is committed (one transaction with its items); if the row is never committed they are deleted again
(:func:`storage.version_objects.gc_orphans` sweeps what a crash left). Version rows are never updated; the unique
(dataset, number) constraint makes concurrent creation safe: the loser retries with the next number, or returns the
winner's version when it froze the same data.

A video project's version also freezes its key-frame project (``<name> (video frames)``,
:func:`storage.harvest.frames_project_of`): each video asset's video-task boxes and key-frame masks become one set
of tracks (:func:`storage.formats.video_tracks_merge.merge_video_views`), which the COCO export holds per source
frame (corrected masks, else box-only instances, with ``maskloop_track_id``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage.agreement import summarize
from storage.catalog import (
    AgreementRow,
    Annotation,
    AnnotationProject,
    AnnotationTask,
    Asset,
    Catalog,
    DatasetVersion,
    DatasetVersionItem,
)
from storage.formats.coco import CocoSource, build_coco, validate_coco
from storage.formats.video_tracks_merge import coco_records, merge_video_views
from storage.harvest import frames_project_of
from storage.version_objects import delete_unreferenced, parse_dest, put_if_absent
from storage.version_reads import find_by_manifest, item_key

logger = logging.getLogger(__name__)

MAX_NUMBER_RETRIES = 20


def manifest_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 of the canonical (sorted, compact JSON) list of ``[asset sha256, annotation hash]`` pairs."""
    canon = sorted([str(a), str(b)] for a, b in pairs)
    for a, b in canon:
        if not a or not b:
            raise ValueError(f"manifest entries need an asset sha256 and an annotation hash, got {[a, b]}")
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


def counts_of(sources: Sequence[CocoSource]) -> dict[str, Any]:
    per_class: Counter[str] = Counter()
    frames = 0
    for s in sources:
        per_class.update(r["label"] for r in s.records)
        if s.media_type == "video":
            frames += len({int(b[0]) for r in s.records for b in r["boxes"]} | {int(f) for f in s.frames})
    return {
        "images": sum(1 for s in sources if s.media_type == "image"),
        "videos": len({s.asset_id for s in sources if s.media_type == "video"}),
        "frames": frames,
        "instances": sum(per_class.values()),
        "instances_per_class": dict(sorted(per_class.items())),
    }


# -- create ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateResult:
    version: DatasetVersion
    created: bool  # False: the same data was already frozen as ``version``
    skipped: dict[str, str] = field(default_factory=dict)  # item key -> why it was left out

    def summary(self) -> FrozenVersion:
        v = self.version
        return FrozenVersion(v.id, v.dataset, v.number, self.created, v.manifest_hash, dict(self.skipped))


@dataclass(frozen=True)
class FrozenVersion:
    """What freezing a version gave, detached from the catalog session."""

    version_id: int
    dataset: str
    number: int
    created: bool  # False: the same data was already frozen
    manifest_hash: str
    skipped: dict[str, str] = field(default_factory=dict)


def _current_items(
    catalog: Catalog, project: AnnotationProject
) -> tuple[list[tuple[Asset, AnnotationTask, Annotation]], dict[str, str]]:
    """Per task the final accepted annotation (latest update wins); items whose asset has no sha256 are skipped."""
    skipped: dict[str, str] = {}
    with catalog.session() as session:
        rows = session.execute(
            select(Asset, AnnotationTask, Annotation)
            .join(AnnotationTask, AnnotationTask.asset_id == Asset.id)
            .join(Annotation, Annotation.task_row_id == AnnotationTask.id)
            .where(AnnotationTask.project_id == project.id)
            .order_by(AnnotationTask.id, Annotation.id)
        ).all()
    latest: dict[int, tuple[Asset, AnnotationTask, Annotation]] = {}
    for asset, task, ann in rows:
        cur = latest.get(task.id)
        stamp = (ann.external_updated_at or ann.harvested_at).replace(tzinfo=None), ann.id
        if cur is None or stamp > ((cur[2].external_updated_at or cur[2].harvested_at).replace(tzinfo=None), cur[2].id):
            latest[task.id] = (asset, task, ann)
    out = []
    for asset, task, ann in latest.values():
        key = item_key(asset, task.frame_index)
        if ann.status != "accepted":
            skipped[key] = ann.skip_reason or ann.status
        elif not asset.sha256:
            skipped[key] = f"asset {asset.uri} has no sha256 (never fetched)"
        else:
            out.append((asset, task, ann))
    return out, skipped


def _project_framerate(project: AnnotationProject) -> float | None:
    """The frame rate a video project counts its frames in (Label Studio's ``<Video framerate>``), else None."""
    if project.media_kind != "video" or project.backend != "label-studio":
        return None
    from storage.labelstudio.config import LabelConfig

    rates = list(LabelConfig.parse(project.label_config).framerates.values())
    return rates[0] if rates else None


def coco_sources(
    items: Sequence[tuple[Asset, AnnotationTask, Annotation]], *, project_fps: float | None = None
) -> list[CocoSource]:
    """The COCO sources of a version's items: one per image, one per video asset with its video task's and key-frame
    tasks' records merged into tracks (``project_fps``: the rate the video task's frames count in)."""
    sources: list[CocoSource] = []
    videos: dict[int, tuple[Asset, list[Any], dict[int, list[Any]]]] = {}
    for a, t, ann in items:
        if a.media_type != "video":
            sources.append(
                CocoSource(
                    a.id,
                    item_key(a, t.frame_index),
                    int(a.width or 0),
                    int(a.height or 0),
                    t.frame_index,
                    a.media_type,
                    ann.instances,
                )
            )
            continue
        _, video_records, frame_records = videos.setdefault(a.id, (a, [], {}))
        if t.frame_index < 0:
            video_records.extend(ann.instances or [])
        else:
            frame_records[t.frame_index] = list(ann.instances or [])
    for asset, video_records, frame_records in videos.values():
        try:
            merged = merge_video_views(
                video_records,
                frame_records,
                height=int(asset.height or 0),
                width=int(asset.width or 0),
                source_fps=asset.fps,
                project_fps=project_fps,
                source_frames=asset.frames,
            )
        except ValueError as exc:
            raise ValueError(f"video {asset.uri}: {exc}") from exc
        sources.append(
            CocoSource(
                asset.id, asset.uri, merged.width, merged.height, -1, "video", coco_records(merged), merged.frames
            )
        )
    return sources


def create_version(
    catalog: Catalog,
    s3: Any,
    project: AnnotationProject,
    dest: str,
    *,
    dataset: str | None = None,
    tag: str | None = None,
    polygons: bool = False,
) -> CreateResult:
    """Freeze ``project``'s accepted annotations as the next version of ``dataset`` (default: the project name).

    ``dest`` is ``s3://bucket/prefix`` for the COCO export and manifest. Unchanged data returns the existing version.
    A video project's key-frame project is frozen with it (one set of tracks per video, see the module).
    """
    dataset = dataset or project.name
    bucket, prefix = parse_dest(dest)
    frames_project = frames_project_of(catalog, project)
    items, skipped = _current_items(catalog, project)
    classes = list(project.classes)
    if frames_project is not None:
        frame_items, frame_skipped = _current_items(catalog, frames_project)
        items, skipped = items + frame_items, {**skipped, **frame_skipped}
        classes += [c for c in frames_project.classes if c not in classes]
    if not items:
        raise ValueError(f"project {project.name!r} has no accepted annotations to freeze (skipped: {len(skipped)})")
    pairs = [(a.sha256 or "", ann.content_hash) for a, _, ann in items]
    digest = manifest_hash(pairs)
    existing = find_by_manifest(catalog, dataset, digest)
    if existing is not None:
        return CreateResult(existing, False, skipped)

    sources = coco_sources(items, project_fps=_project_framerate(project))
    coco = build_coco(sources, classes, polygons=polygons, info={"dataset": dataset, "manifest_hash": digest})
    validate_coco(coco)
    counts = counts_of(sources)
    ann_ids = [ann.id for _, _, ann in items]
    with catalog.session() as session:
        agreement_rows = (
            session.execute(
                select(
                    AgreementRow.model_version,
                    AgreementRow.prompt_strategy,
                    AgreementRow.label,
                    AgreementRow.outcome,
                    AgreementRow.iou,
                    AgreementRow.boundary_f,
                ).where(AgreementRow.annotation_id.in_(ann_ids))
            )
            .tuples()
            .all()
        )
    groups = [g.to_json() for g in summarize(agreement_rows)]
    model_versions = sorted({t.last_model_version for _, t, _ in items if t.last_model_version})
    agreement = {"groups": groups, "totals": dict(Counter(r[3] for r in agreement_rows))}

    coco_body = json.dumps(coco, separators=(",", ":"), sort_keys=True).encode()
    coco_key = f"{prefix}/{dataset}/coco/{hashlib.sha256(coco_body).hexdigest()}.json".lstrip("/")
    manifest = {
        "dataset": dataset,
        "manifest_hash": digest,
        "source_project": {
            "name": project.name,
            "backend": project.backend,
            "backend_url": project.backend_url,
            "external_project_id": project.external_project_id,
            **({"frames_project": frames_project.name} if frames_project is not None else {}),
        },
        "items": sorted(
            (
                {"key": item_key(a, t.frame_index), "asset_sha256": a.sha256, "annotation_hash": ann.content_hash}
                for a, t, ann in items
            ),
            key=lambda i: str(i["key"]),
        ),
        "counts": counts,
        "model_versions": model_versions,
        "agreement": agreement,
        "coco": f"s3://{bucket}/{coco_key}",
    }
    manifest_body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    manifest_key = f"{prefix}/{dataset}/manifests/{digest}.json".lstrip("/")
    written = [
        k for k, body in ((coco_key, coco_body), (manifest_key, manifest_body)) if put_if_absent(s3, bucket, k, body)
    ]
    try:
        version, created = _insert(
            catalog,
            project,
            dataset,
            tag,
            digest,
            counts,
            model_versions,
            agreement,
            f"s3://{bucket}/{coco_key}",
            f"s3://{bucket}/{manifest_key}",
            items,
        )
    except BaseException:
        delete_unreferenced(catalog, s3, bucket, written)
        raise
    return CreateResult(version, created, skipped)


def _insert(
    catalog: Catalog,
    project: AnnotationProject,
    dataset: str,
    tag: str | None,
    digest: str,
    counts: dict[str, Any],
    model_versions: list[str],
    agreement: dict[str, Any],
    coco_uri: str,
    manifest_uri: str,
    items: Sequence[tuple[Asset, AnnotationTask, Annotation]],
) -> tuple[DatasetVersion, bool]:
    for _ in range(MAX_NUMBER_RETRIES):
        try:
            with catalog.session() as session:
                parent = session.scalar(
                    select(DatasetVersion)
                    .where(DatasetVersion.dataset == dataset)
                    .order_by(DatasetVersion.number.desc())
                    .limit(1)
                )
                version = DatasetVersion(
                    dataset=dataset,
                    number=(parent.number + 1) if parent else 1,
                    tag=tag,
                    parent_id=parent.id if parent else None,
                    source_project_id=project.id,
                    manifest_hash=digest,
                    counts=counts,
                    model_versions=model_versions,
                    agreement=agreement,
                    coco_uri=coco_uri,
                    manifest_uri=manifest_uri,
                )
                session.add(version)
                session.flush()
                session.add_all(
                    DatasetVersionItem(
                        version_id=version.id,
                        asset_id=a.id,
                        frame_index=t.frame_index,
                        annotation_id=ann.id,
                        asset_sha256=a.sha256 or "",
                        annotation_hash=ann.content_hash,
                    )
                    for a, t, ann in items
                )
            logger.info("dataset %s version %d (%s) created", dataset, version.number, digest[:12])
            return version, True
        except IntegrityError:
            same = find_by_manifest(catalog, dataset, digest)
            if same is not None:  # a concurrent creator froze the same data
                return same, False
            logger.info("dataset %s: version number taken by a concurrent creator; retrying", dataset)
    raise RuntimeError(f"dataset {dataset!r}: could not take a version number after {MAX_NUMBER_RETRIES} attempts")
