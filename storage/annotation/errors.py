"""Errors of the annotation-backend seam: they name the project or server and say what to do."""

from __future__ import annotations

from model.errors import MaskloopError


class AnnotationBackendNotConfiguredError(MaskloopError, ValueError):
    """The annotation backend at ``url`` cannot be used as configured; ``fix`` says which setting to give."""

    def __init__(self, backend: str, url: str, fix: str) -> None:
        super().__init__(f"{backend} at {url} is not configured: {fix}")
        self.backend, self.url, self.fix = backend, url, fix


class UnknownBackendError(MaskloopError, ValueError):
    """No annotation backend is registered under this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"annotation backend {name!r} is not known; choose one of {known}")
        self.name = name


class ProjectNotFoundError(MaskloopError, LookupError):
    """The annotation project is unknown to the catalog or no longer exists on the backend's server."""

    def __init__(self, project: str, reason: str) -> None:
        super().__init__(f"annotation project {project!r}: {reason}")
        self.project = project


class AnnotationError(MaskloopError, ValueError):
    """One annotation cannot be used (the reason names the region)."""
