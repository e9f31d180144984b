"""What crosses the annotation-backend seam, whatever the backend: pre-labels going in, annotations coming out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model.instances import Instances
from model.tracks import VideoTracks


def model_version_string(
    model_id: str, checkpoint_sha: str, prompt_strategy: str, prompt_hash: str | None = None
) -> str:
    """``<model id>@<checkpoint short sha>/<prompt strategy>``: the ``model_version`` a run's predictions carry in
    the catalog and the annotation backend; with ``+<prompt hash>`` when the prompts differ from the strategy's
    defaults (:func:`storage.catalog.jobs.prompt_hash`)."""
    parts = {"model_id": model_id, "checkpoint_sha": checkpoint_sha, "prompt_strategy": prompt_strategy}
    empty = [k for k, v in parts.items() if not v]
    if empty:
        raise ValueError(f"model_version_string needs non-empty {empty}")
    version = f"{model_id}@{checkpoint_sha[:8]}/{prompt_strategy}"
    return f"{version}+{prompt_hash}" if prompt_hash else version


@dataclass(frozen=True)
class EncodedInstances:
    """An image's instances as the catalog stores them (:meth:`Instances.to_records`, masks as COCO RLE) and its
    size: a backend that converts RLE to its own format directly (Label Studio's brush RLE) never decodes the masks;
    any other calls :meth:`decode`."""

    records: Sequence[Mapping[str, Any]]
    height: int
    width: int

    def decode(self) -> Instances:
        return Instances.from_records(self.records, self.height, self.width)


@dataclass(frozen=True)
class ImportItem:
    """One task's worth of pre-labels: ``results`` are :class:`Instances` or :class:`EncodedInstances` (image
    projects), :class:`VideoTracks`
    (video projects) or results already in the backend's own format (any project). ``task_score`` is the
    uncertainty used for active learning (low scores are reviewed first); ``frame_index`` -1 means the whole
    asset, another value one frame of a video (its source index). ``extra_data``: more fields for the task's data
    (JSON scalars, e.g. a video frame's ``maskloop_time_s``); the backend's own keys (media URL, asset, frame,
    model version) take precedence over them."""

    asset_id: int
    media_url: str
    results: Instances | EncodedInstances | VideoTracks | Sequence[Mapping[str, Any]]
    model_version: str
    task_score: float | None = None
    frame_index: int = -1
    extra_data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.media_url:
            raise ValueError(f"ImportItem for asset {self.asset_id}: media_url must be non-empty")
        if not self.model_version:
            raise ValueError(f"ImportItem for asset {self.asset_id}: model_version must be non-empty")
        if self.frame_index < -1:
            raise ValueError(f"ImportItem for asset {self.asset_id}: frame_index must be >= -1, got {self.frame_index}")
        for name, value in self.extra_data.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"ImportItem for asset {self.asset_id}: extra_data keys must be non-empty strings")
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise ValueError(
                    f"ImportItem for asset {self.asset_id}: extra_data[{name!r}] must be a JSON scalar, "
                    f"got {type(value).__name__}"
                )

    @property
    def key(self) -> tuple[int, int]:
        return (self.asset_id, self.frame_index)


@dataclass(frozen=True)
class ImportReport:
    created: int = 0  # new tasks
    skipped: int = 0  # task already has this model version
    refreshed: int = 0  # existing task got the new model version's prediction
    kept: int = 0  # existing task a person has already annotated: left as it is (``keep_touched``)
    reconciled: int = 0  # tasks found in the backend that the catalog had lost (crash between POST and commit)
    batches: int = 0
    restored: int = 0  # new tasks whose prediction the backend dropped, added again


@dataclass(frozen=True)
class ReplacedMedia:
    """What replacing tasks' media URLs did: how many were replaced, and the (asset, frame) keys whose task is gone
    from the backend (left as they are)."""

    replaced: int = 0
    gone: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class MediaSize:
    """What a backend needs to know of an asset to turn its regions into instance records (``frames``: videos)."""

    height: int
    width: int
    frames: int = 0


@dataclass(frozen=True)
class ChangedAnnotation:
    """One annotation as the backend holds it: ``result`` in the backend's format (stored as it is, and turned
    into instance records by :meth:`AnnotationBackend.annotation_records`); ``cancelled`` when the person skipped
    the task instead."""

    external_id: int
    result: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ChangedTask:
    """A task changed since the harvest cursor, with all of its annotations (none when they were all deleted)."""

    external_task_id: int
    annotations: list[ChangedAnnotation] = field(default_factory=list)
