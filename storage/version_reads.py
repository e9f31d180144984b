"""Reading the catalog's dataset versions: find, list, describe and diff them (the write side, freezing a version,
is :mod:`storage.versions`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from model.errors import MaskloopError
from storage.catalog import Asset, Catalog, DatasetVersion, DatasetVersionItem


class VersionNotFoundError(MaskloopError, LookupError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"dataset version {ref!r} does not exist")


# -- pure parts --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    class_deltas: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.class_deltas)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "class_deltas": self.class_deltas,
        }


def diff_items(
    a: Mapping[str, str], b: Mapping[str, str], classes_a: Mapping[str, int], classes_b: Mapping[str, int]
) -> VersionDiff:
    """Items (item key -> content hash) added, removed and changed from ``a`` to ``b``; non-zero per-class deltas."""
    deltas = {c: int(classes_b.get(c, 0)) - int(classes_a.get(c, 0)) for c in sorted(set(classes_a) | set(classes_b))}
    return VersionDiff(
        added=sorted(set(b) - set(a)),
        removed=sorted(set(a) - set(b)),
        changed=sorted(k for k in set(a) & set(b) if a[k] != b[k]),
        class_deltas={c: d for c, d in deltas.items() if d},
    )


def item_key(asset: Asset, frame_index: int) -> str:
    return asset.uri if frame_index < 0 else f"{asset.uri}#frame={frame_index}"


def find_by_manifest(catalog: Catalog, dataset: str, digest: str) -> DatasetVersion | None:
    with catalog.session() as session:
        return session.scalar(
            select(DatasetVersion).where(DatasetVersion.dataset == dataset, DatasetVersion.manifest_hash == digest)
        )


def get_version(catalog: Catalog, version_id: int) -> DatasetVersion:
    with catalog.session() as session:
        version = session.get(DatasetVersion, version_id)
    if version is None:
        raise VersionNotFoundError(version_id)
    return version


def list_versions(catalog: Catalog, dataset: str | None = None) -> list[DatasetVersion]:
    with catalog.session() as session:
        stmt = select(DatasetVersion).order_by(DatasetVersion.dataset, DatasetVersion.number)
        if dataset:
            stmt = stmt.where(DatasetVersion.dataset == dataset)
        return list(session.scalars(stmt))


def version_items(catalog: Catalog, version_id: int) -> dict[str, str]:
    """Item key -> ``asset sha256:annotation hash`` of a version."""
    with catalog.session() as session:
        rows = session.execute(
            select(Asset, DatasetVersionItem)
            .join(Asset, Asset.id == DatasetVersionItem.asset_id)
            .where(DatasetVersionItem.version_id == version_id)
        ).all()
    return {item_key(a, i.frame_index): f"{i.asset_sha256}:{i.annotation_hash}" for a, i in rows}


def diff_versions(catalog: Catalog, a: int, b: int) -> VersionDiff:
    va, vb = get_version(catalog, a), get_version(catalog, b)
    return diff_items(
        version_items(catalog, a),
        version_items(catalog, b),
        va.counts.get("instances_per_class", {}),
        vb.counts.get("instances_per_class", {}),
    )


def version_count(catalog: Catalog, dataset: str) -> int:
    with catalog.session() as session:
        return int(session.scalar(select(func.count(DatasetVersion.id)).where(DatasetVersion.dataset == dataset)) or 0)


def describe(version: DatasetVersion) -> list[str]:
    """Human-readable lines of ``maskloop versions show``."""
    counts = version.counts
    lines = [
        f"version {version.id}: {version.dataset} v{version.number}" + (f" [{version.tag}]" if version.tag else ""),
        f"  created      {version.created_at:%Y-%m-%d %H:%M:%S}  parent {version.parent_id or '-'}  source project {version.source_project_id}",
        f"  manifest     {version.manifest_hash}",
        f"  counts       images {counts.get('images', 0)}, videos {counts.get('videos', 0)}, frames {counts.get('frames', 0)}, instances {counts.get('instances', 0)}",
    ]
    for label, n in counts.get("instances_per_class", {}).items():
        lines.append(f"    {label:<20} {n}")
    lines.append(f"  pre-labelled by {', '.join(version.model_versions) or '-'}")
    lines.append(f"  agreement    {version.agreement.get('totals', {})}")
    for g in version.agreement.get("groups", []):
        rate = g["acceptance_rate"]
        lines.append(
            f"    {g['model_version']} [{g['prompt_strategy']}] {g['label']}: "
            + ", ".join(f"{k} {v}" for k, v in g["counts"].items())
            + f"; mean IoU {g['mean_iou']}, boundary F {g['mean_boundary_f']}, accepted {'-' if rate is None else f'{rate:.0%}'}"
        )
    lines.append(f"  coco         {version.coco_uri}")
    lines.append(f"  manifest     {version.manifest_uri}")
    return lines
