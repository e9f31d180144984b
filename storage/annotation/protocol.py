"""What maskloop does with an annotation tool, as one protocol: :class:`AnnotationBackend`.

A backend keeps people's work on its own server; the catalog keeps maskloop's side of it: one
:class:`~storage.catalog.AnnotationProject` row per project (``backend``, ``backend_url``, ``external_project_id``)
and one :class:`~storage.catalog.AnnotationTask` row per imported (asset, frame). Task ids in this protocol are the
backend's own (``AnnotationTask.external_task_id``). Label Studio implements it in
:mod:`storage.labelstudio.backend`; :mod:`storage.annotation.registry` builds one from the settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, Self, runtime_checkable

from storage.annotation.items import ChangedTask, ImportItem, ImportReport, MediaSize, ReplacedMedia
from storage.catalog import AnnotationProject, Catalog


@runtime_checkable
class AnnotationBackend(Protocol):
    """One annotation server. Calls that change the backend are idempotent through the catalog, so a retried or
    re-run operation never duplicates a project, a task or a prediction."""

    @property
    def name(self) -> str:
        """The registry name (``"label-studio"``), stored in ``AnnotationProject.backend``."""
        ...

    @property
    def title(self) -> str:
        """The backend's name for people (``"Label Studio"``), in messages."""
        ...

    @property
    def url(self) -> str:
        """The server's base URL without a trailing slash, stored in ``AnnotationProject.backend_url``."""
        ...

    # -- projects ------------------------------------------------------------------------------------------------
    def ensure_project(
        self, catalog: Catalog, name: str, media_kind: str, classes: Sequence[str], **config_options: Any
    ) -> AnnotationProject:
        """The catalog's row for the project ``name`` on this server, creating the project (labeling configuration
        generated from ``classes`` for ``media_kind`` "image" or "video") when missing and updating its
        configuration when the classes changed. ``config_options`` are backend-specific (Label Studio: ``brush``,
        ``polygons``, ``rectangles``; ``framerate``)."""
        ...

    # -- pre-labels ----------------------------------------------------------------------------------------------
    def import_predictions(
        self,
        catalog: Catalog,
        project: AnnotationProject,
        items: Iterable[ImportItem],
        *,
        keep_touched: bool = False,
    ) -> ImportReport:
        """Bulk, idempotent, resumable import: new (asset, frame) become tasks carrying their prediction; existing
        tasks get the new model version's prediction added (``keep_touched``: not those a person already
        annotated or skipped). Every item is validated before anything is sent; tasks are recorded in the catalog
        as they are created, and a rerun after a crash finds (and records) what was created before it."""
        ...

    def replace_media_urls(
        self, catalog: Catalog, project: AnnotationProject, urls: Mapping[tuple[int, int], str]
    ) -> ReplacedMedia:
        """Put ``urls[(asset id, frame index)]`` into those tasks as their media URL (every other field of the task
        kept) and record in the catalog when each new URL expires (``AnnotationTask.media_url_expires_at``).
        Idempotent; a task gone from the server is left as it is and reported in ``gone``."""
        ...

    # -- harvest -------------------------------------------------------------------------------------------------
    def current_model_version(self, project: AnnotationProject) -> str | None:
        """The model version whose predictions the project shows people (None when unset). Raises
        :class:`~storage.annotation.errors.ProjectNotFoundError` when the project is gone from the server."""
        ...

    def changed_annotations(
        self, project: AnnotationProject, since: datetime | None, *, page_size: int = 100
    ) -> Iterator[list[ChangedTask]]:
        """Pages of the tasks changed after ``since`` (every task when None), in a stable order, each with all of
        its annotations. The caller stores each page before asking for the next."""
        ...

    def annotation_records(
        self, project: AnnotationProject, result: Sequence[Mapping[str, Any]], media: MediaSize
    ) -> tuple[list[dict[str, Any]], int]:
        """An annotation's regions as instance records (COCO RLE ``{"label", "rle", "box", "region_id"}`` for
        images; ``{"label", "boxes", "region_id"}`` per-frame boxes for videos) and how many empty regions were
        dropped. Raises :class:`~storage.annotation.errors.AnnotationError` naming the region that cannot be used
        (label not in the project, shape that does not fit ``media``)."""
        ...

    # -- active learning: the review queue -----------------------------------------------------------------------
    def write_scores(
        self,
        project: AnnotationProject,
        versions: Mapping[int, str],
        task_scores: Mapping[int, float],
        clusters: Mapping[int, int],
    ) -> int:
        """Set each task's score (low: review first) and cluster on the prediction it shows (``versions``: task id
        -> that prediction's model version), which the backend orders its queue by; returns how many were set."""
        ...

    def review_view(self, project: AnnotationProject, task_ids: Sequence[int], title: str) -> int:
        """A saved view ``title`` listing exactly ``task_ids``, lowest score first (updated when it exists);
        returns its id."""
        ...

    def review_url(self, project: AnnotationProject, view_id: int | None = None) -> str:
        """Where people open the project's tasks in a browser (the review view ``view_id`` when given)."""
        ...

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
