"""Label Studio as an :class:`~storage.annotation.AnnotationBackend`: delegates to the client, the importer and the
harvest converters of this package; the active-learning queue is Label Studio's prediction scores (its
"Uncertainty sampling" serves low scores first) and a data-manager tab listing the tasks to review."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Self

from storage.annotation.errors import AnnotationBackendNotConfiguredError, ProjectNotFoundError
from storage.annotation.items import ChangedTask, ImportItem, ImportReport, MediaSize, ReplacedMedia
from storage.catalog import AnnotationProject, Catalog
from storage.labelstudio import importer, media_urls, projects
from storage.labelstudio.annotations import annotation_records, changed_task, iter_task_pages
from storage.labelstudio.client import LabelStudioClient, LabelStudioError
from storage.labelstudio.config import LabelConfig
from storage.settings import Settings


class LabelStudioBackend:
    """``LabelStudioBackend(client)``, or :meth:`from_settings`. Closing it closes the client."""

    name = projects.BACKEND_NAME
    title = "Label Studio"

    def __init__(self, client: LabelStudioClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioBackend:
        """The backend at ``settings.label_studio_url`` with its API token and retry bounds (the registry's
        factory). Raises :class:`AnnotationBackendNotConfiguredError` when no token is set."""
        token = settings.label_studio_token.get_secret_value() if settings.label_studio_token else ""
        if not token.strip():
            raise AnnotationBackendNotConfiguredError(
                cls.title,
                settings.label_studio_url,
                "no API token; set MASKLOOP_LABEL_STUDIO_TOKEN (the token of a Label Studio user, "
                "Account & Settings > Access Token), or run `maskloop stack up`, which starts Label Studio and sets it",
            )
        return cls(LabelStudioClient.from_settings(settings))

    @property
    def url(self) -> str:
        return self.client.url

    def __repr__(self) -> str:
        return f"LabelStudioBackend({self.url!r})"

    # -- projects ------------------------------------------------------------------------------------------------
    def ensure_project(
        self, catalog: Catalog, name: str, media_kind: str, classes: Sequence[str], **config_options: Any
    ) -> AnnotationProject:
        return projects.ensure_project(self.client, catalog, name, media_kind, classes, **config_options)

    # -- pre-labels ----------------------------------------------------------------------------------------------
    def import_predictions(
        self,
        catalog: Catalog,
        project: AnnotationProject,
        items: Iterable[ImportItem],
        *,
        keep_touched: bool = False,
    ) -> ImportReport:
        return importer.import_predictions(self.client, catalog, project, items, keep_touched=keep_touched)

    def replace_media_urls(
        self, catalog: Catalog, project: AnnotationProject, urls: Mapping[tuple[int, int], str]
    ) -> ReplacedMedia:
        return media_urls.replace_media_urls(self.client, catalog, project, urls)

    # -- harvest -------------------------------------------------------------------------------------------------
    def current_model_version(self, project: AnnotationProject) -> str | None:
        try:
            found = self.client.get_project(project.external_project_id)
        except LabelStudioError as exc:
            if exc.status == 404:
                raise ProjectNotFoundError(
                    project.name, f"project id {project.external_project_id} does not exist on {self.url}"
                ) from exc
            raise
        return found.get("model_version") or None

    def changed_annotations(
        self, project: AnnotationProject, since: datetime | None, *, page_size: int = 100
    ) -> Iterator[list[ChangedTask]]:
        for page in iter_task_pages(self.client, project.external_project_id, since, page_size):
            yield [changed_task(task) for task in page]

    def annotation_records(
        self, project: AnnotationProject, result: Sequence[Mapping[str, Any]], media: MediaSize
    ) -> tuple[list[dict[str, Any]], int]:
        return annotation_records(LabelConfig.parse(project.label_config), project.media_kind, result, media)

    # -- active learning: the review queue -----------------------------------------------------------------------
    def write_scores(
        self,
        project: AnnotationProject,
        versions: Mapping[int, str],
        task_scores: Mapping[int, float],
        clusters: Mapping[int, int],
    ) -> int:
        """PATCH the prediction each task shows with its task score (and cluster), which Label Studio's
        uncertainty sampling orders by."""
        updated = 0
        for pred in self.client.list_project_predictions(project.external_project_id):
            task = int(pred.get("task") or 0)
            if task not in task_scores or pred.get("model_version") != versions.get(task):
                continue
            fields: dict[str, Any] = {"score": float(task_scores[task])}
            if task in clusters:
                fields["cluster"] = int(clusters[task])
            self.client.update_prediction(int(pred["id"]), **fields)
            updated += 1
        return updated

    def review_view(self, project: AnnotationProject, task_ids: Sequence[int], title: str) -> int:
        """A data-manager tab ``title`` filtered to exactly ``task_ids``, ordered by prediction score."""
        data = {
            "title": title,
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:id",
                        "operator": "in_list",
                        "type": "Number",
                        "value": [int(t) for t in task_ids],
                    }
                ],
            },
            "ordering": ["tasks:predictions_score"],
        }
        pid = project.external_project_id
        for view in self.client.list_views(pid):
            if (view.get("data") or {}).get("title") == title:
                self.client.update_view(int(view["id"]), pid, data)
                return int(view["id"])
        return int(self.client.create_view(pid, data)["id"])

    def review_url(self, project: AnnotationProject, view_id: int | None = None) -> str:
        base = f"{self.url}/projects/{project.external_project_id}/data"
        return f"{base}?tab={view_id}" if view_id is not None else base

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
