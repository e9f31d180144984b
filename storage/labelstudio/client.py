"""A thin HTTP client for the parts of Label Studio's REST API maskloop uses (httpx, retries with backoff).

The SDK is not used on the hot path: it validates and re-serialises every payload (bulk import ~215 tasks/s with
one 640x480 brush mask vs ~300+/s raw). Token auth uses the legacy ``Authorization: Token <key>`` header.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from storage.retry import RetryPolicy, Transient, retry_after_s

if TYPE_CHECKING:
    from storage.settings import Settings

from model.errors import MaskloopError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 502, 503, 504})


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (same CA bundle, verification on), built once per process: building it loads the
    CA bundle, tens of ms of Python per client, which the pre-label flow paid per imported batch."""
    return httpx.create_ssl_context()


class LabelStudioError(MaskloopError, RuntimeError):
    """Label Studio answered with an error status; ``status`` and the response ``body`` are kept."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"Label Studio {method} {path} failed with HTTP {status}: {body[:500]}")
        self.method, self.path = method, path
        self.status = status
        self.body = body
        self.retry_after_s: float | None = None  # the server's Retry-After (429/503), when it sent one

    def __reduce__(self) -> tuple[Any, ...]:  # pickles whole (it crosses to the flow from the I/O helper process)
        return (type(self), (self.method, self.path, self.status, self.body), self.__dict__)


class LabelStudioUnavailableError(MaskloopError, ConnectionError):
    """Label Studio did not answer (refused, reset, timed out) within the retry bounds."""


def classify(error: BaseException) -> Transient | None:
    """Label Studio's transient failures: no connection (restarting, reset, timed out) and 429/502/503/504."""
    if isinstance(error, httpx.TransportError):
        return Transient()
    if isinstance(error, LabelStudioError) and error.status in RETRY_STATUS:
        return Transient(error.retry_after_s)
    return None


class LabelStudioClient:
    """``LabelStudioClient(url, token)``: projects, bulk task import, predictions, task listing."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 300.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio url must start with http:// or https://, got {url!r}")
        if not token:
            raise ValueError("Label Studio token must be non-empty")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.url = url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        # the one retry layer of Label Studio calls (storage/retry.py); from_settings uses annotation_retry_*
        self.retry = retry or RetryPolicy("Label Studio", max_attempts, 60.0, backoff_s)
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {token}"}, timeout=timeout_s, verify=_ssl_context()
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LabelStudioClient:
        """A client for ``settings.label_studio_url`` with the retry bounds ``settings.annotation_retry_*``."""
        token = settings.label_studio_token.get_secret_value() if settings.label_studio_token else ""
        return cls(settings.label_studio_url, token, retry=RetryPolicy.for_annotation(settings), **options)

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send one request; connection errors and 429/502/503/504 answers are retried within ``self.retry``
        (attempts and total time; ``Retry-After`` honoured), logged once per failure.

        ``retry=False`` for non-idempotent calls whose duplicate would be harmful when the first attempt may have
        been applied (the importer reconciles those itself).
        """
        headers = {"Content-Type": "application/json"} if content is not None else None

        def send() -> Any:
            resp = self._http.request(method, path, json=json_body, content=content, params=params, headers=headers)
            if resp.status_code < 400:
                return resp.json() if resp.content else None
            error = LabelStudioError(method, path, resp.status_code, resp.text)
            error.retry_after_s = retry_after_s(resp.headers.get("Retry-After"))
            raise error

        if not retry:
            return send()
        try:
            return self.retry.call(send, f"Label Studio {method} {path} at {self.url}", classify)
        except httpx.TransportError as error:
            raise LabelStudioUnavailableError(
                f"Label Studio at {self.url} did not answer {method} {path} ({type(error).__name__}: {error}) within "
                f"{self.retry.attempts} attempts / {self.retry.total_s:g} s: check that it runs (`maskloop stack "
                "status`), then rerun the command; what was imported is kept and nothing is imported twice"
            ) from error

    # -- projects ----------------------------------------------------------------------------------------------------
    def list_projects(self, title: str | None = None) -> list[dict[str, Any]]:
        projects: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self.request(
                "GET", "/api/projects/", params={"page": page, "page_size": 100, **({"title": title} if title else {})}
            )
            items = data["results"] if isinstance(data, dict) else data
            projects.extend(items)
            if not isinstance(data, dict) or not data.get("next"):
                break
            page += 1
        return [p for p in projects if title is None or p.get("title") == title]

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{project_id}/")

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        return self.request(
            "POST", "/api/projects/", json_body={"title": title, "label_config": label_config, **fields}, retry=False
        )

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/projects/{project_id}/", json_body=fields)

    # -- tasks -------------------------------------------------------------------------------------------------------
    def import_tasks_raw(self, project_id: int, body: bytes) -> list[int]:
        """POST an already serialised JSON task list; returns the created task ids in order."""
        return self.import_tasks_counted(project_id, body)[0]

    def import_tasks_counted(self, project_id: int, body: bytes) -> tuple[list[int], int]:
        """POST an already serialised JSON task list; returns the created task ids in order and how many
        predictions Label Studio created with them.

        Not retried: a timeout after Label Studio committed would duplicate tasks; callers reconcile instead.
        """
        data = self.request(
            "POST", f"/api/projects/{project_id}/import", content=body, params={"return_task_ids": "true"}, retry=False
        )
        return [int(t) for t in data.get("task_ids", [])], int(data.get("prediction_count") or 0)

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.import_tasks_raw(project_id, json.dumps(list(tasks)).encode())

    def import_predictions(self, project_id: int, predictions: Sequence[Mapping[str, Any]]) -> int:
        """Bulk-create predictions ``{"task", "result", "score", "model_version"}``; returns how many were created."""
        data = self.request(
            "POST", f"/api/projects/{project_id}/import/predictions", json_body=list(predictions), retry=False
        )
        return int(data.get("created", 0))

    def iter_tasks(
        self, project_id: int, *, page_size: int = 500, all_fields: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every task of a project (id, data, total_annotations, ...; predictions/annotations with ``all_fields``)."""
        page = 1
        while True:
            params: dict[str, Any] = {
                "project": project_id,
                "page": page,
                "page_size": page_size,
                "resolve_uri": "false",
            }
            if all_fields:
                params["fields"] = "all"
            try:
                data = self.request("GET", "/api/tasks/", params=params)
            except LabelStudioError as exc:
                if exc.status == 404:  # past the last page
                    return
                raise
            tasks = data.get("tasks", []) if isinstance(data, dict) else data
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1

    def selected_tasks(
        self, project_id: int, task_ids: Sequence[int], page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """The tasks ``task_ids`` of a project (id, data, counts; one listing request per ``page_size`` ids, not one
        request per task); ids that are not there (deleted) are simply not yielded."""
        wanted = {int(t) for t in task_ids}
        ids = sorted(wanted)
        for start in range(0, len(ids), page_size):
            chunk = ids[start : start + page_size]
            query = json.dumps({"selectedItems": {"all": False, "included": chunk}})
            params = {"project": project_id, "page": 1, "page_size": len(chunk), "query": query, "resolve_uri": "false"}
            data = self.request("GET", "/api/tasks/", params=params)
            tasks = data.get("tasks", []) if isinstance(data, dict) else data
            yield from (task for task in tasks if int(task["id"]) in wanted)

    def touched_task_ids(self, project_id: int, task_ids: Sequence[int], page_size: int = 500) -> set[int]:
        """Those of ``task_ids`` that a person has annotated, skipped or cancelled (their pre-labels are left alone)."""
        return {
            int(task["id"])
            for task in self.selected_tasks(project_id, task_ids, page_size)
            if (task.get("total_annotations") or 0) + (task.get("cancelled_annotations") or 0)
        }

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/tasks/{task_id}/")

    def update_task(self, task_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/tasks/{task_id}/", json_body=fields)

    def list_predictions(self, task_id: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/predictions/", params={"task": task_id})

    def create_annotation(self, task_id: int, result: Sequence[Mapping[str, Any]], **fields: Any) -> dict[str, Any]:
        return self.request(
            "POST", f"/api/tasks/{task_id}/annotations/", json_body={"result": list(result), **fields}, retry=False
        )

    # -- predictions and views (active learning) ----------------------------------------------------------------------
    def list_project_predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of a project (id, task, model_version, score, cluster, result)."""
        data = self.request("GET", "/api/predictions/", params={"project": project_id})
        return list(data["results"] if isinstance(data, dict) else data)

    def update_prediction(self, prediction_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH a prediction (e.g. ``score`` and ``cluster``, which Label Studio's uncertainty sampling orders by)."""
        return self.request("PATCH", f"/api/predictions/{prediction_id}/", json_body=fields)

    def list_views(self, project_id: int) -> list[dict[str, Any]]:
        data = self.request("GET", "/api/dm/views/", params={"project": project_id})
        return list(data["results"] if isinstance(data, dict) else data)

    def create_view(self, project_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
        """A data-manager tab (``data``: title, filters, ordering ...)."""
        body = {"project": project_id, "data": dict(data)}
        return self.request("POST", "/api/dm/views/", json_body=body, retry=False)

    def update_view(self, view_id: int, project_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", f"/api/dm/views/{view_id}/", json_body={"project": project_id, "data": dict(data)})

    def view_task_ids(self, project_id: int, view_id: int, page_size: int = 500) -> list[int]:
        """Ids of the tasks a data-manager view shows, in its order."""
        ids: list[int] = []
        page = 1
        while True:
            params: dict[str, Any] = {"project": project_id, "view": view_id, "page": page, "page_size": page_size}
            params["fields"] = "task_only"
            try:
                data = self.request("GET", "/api/tasks/", params=params)
            except LabelStudioError as exc:
                if exc.status == 404:
                    return ids
                raise
            tasks = data.get("tasks", []) if isinstance(data, dict) else data
            ids += [int(t["id"]) for t in tasks]
            if len(tasks) < page_size:
                return ids
            page += 1
