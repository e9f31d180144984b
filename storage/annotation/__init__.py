"""The annotation-backend seam: :class:`~storage.annotation.protocol.AnnotationBackend` (what maskloop does with an
annotation tool), the values that cross it (:mod:`storage.annotation.items`), its errors, and the catalog's side
of projects. Backends by name: :mod:`storage.annotation.registry` (not imported here: the backends import this
package)."""

from storage.annotation.errors import (
    AnnotationBackendNotConfiguredError,
    AnnotationError,
    ProjectNotFoundError,
    UnknownBackendError,
)
from storage.annotation.items import (
    ChangedAnnotation,
    ChangedTask,
    ImportItem,
    ImportReport,
    MediaSize,
    ReplacedMedia,
    model_version_string,
)
from storage.annotation.projects import find_project
from storage.annotation.protocol import AnnotationBackend

__all__ = [
    "AnnotationBackend",
    "AnnotationBackendNotConfiguredError",
    "AnnotationError",
    "ChangedAnnotation",
    "ChangedTask",
    "ImportItem",
    "ImportReport",
    "MediaSize",
    "ProjectNotFoundError",
    "ReplacedMedia",
    "UnknownBackendError",
    "find_project",
    "model_version_string",
]
