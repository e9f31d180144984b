"""Annotation backends by name. Adding one: a module implementing :class:`AnnotationBackend` (with a
``from_settings`` factory) and one line in :data:`BACKENDS`."""

from __future__ import annotations

from collections.abc import Callable

from storage.annotation.errors import UnknownBackendError
from storage.annotation.protocol import AnnotationBackend
from storage.labelstudio.backend import LabelStudioBackend
from storage.settings import Settings

DEFAULT_BACKEND = "label-studio"

BACKENDS: dict[str, Callable[[Settings], AnnotationBackend]] = {
    "label-studio": LabelStudioBackend.from_settings,
}


def annotation_backend(settings: Settings, name: str = DEFAULT_BACKEND) -> AnnotationBackend:
    """The backend ``name`` built from ``settings`` (its factory checks what it needs, e.g. an API token, and raises
    :class:`~storage.annotation.errors.AnnotationBackendNotConfiguredError` saying what to set). Close it after
    use (it is a context manager)."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise UnknownBackendError(name, sorted(BACKENDS))
    return factory(settings)
