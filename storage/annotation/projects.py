"""The catalog's side of annotation projects, whatever the backend."""

from __future__ import annotations

from sqlalchemy import select

from storage.annotation.errors import ProjectNotFoundError
from storage.catalog import AnnotationProject, Catalog

# A pre-label project ``<name>`` is one annotation project per view of its media (Label Studio caps titles at 50
# characters, so ``storage.params`` caps ``<name>`` to leave room for the longest suffix)
IMAGES_SUFFIX, VIDEOS_SUFFIX, FRAMES_SUFFIX = " (images)", " (videos)", " (video frames)"
VIEW_SUFFIXES = (IMAGES_SUFFIX, VIDEOS_SUFFIX, FRAMES_SUFFIX)


def view_project(project: str, media_kind: str) -> str:
    """The annotation project of pre-label project ``project`` for ``media_kind`` image, video or frames."""
    suffixes = {"image": IMAGES_SUFFIX, "video": VIDEOS_SUFFIX, "frames": FRAMES_SUFFIX}
    if media_kind not in suffixes:
        raise ValueError(f"media_kind must be one of {sorted(suffixes)}, got {media_kind!r}")
    return f"{project}{suffixes[media_kind]}"


def job_project(name: str) -> str:
    """The pre-label project an annotation project ``name`` belongs to (``name`` itself when it has no view
    suffix)."""
    for suffix in VIEW_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_project(catalog: Catalog, name: str, *, backend: str, url: str) -> AnnotationProject:
    """The catalog's row of project ``name`` on the ``backend`` server at ``url``; needs no connection to it."""
    url = url.rstrip("/")
    with catalog.session() as session:
        row = session.scalar(
            select(AnnotationProject).where(
                AnnotationProject.backend == backend,
                AnnotationProject.backend_url == url,
                AnnotationProject.name == name,
            )
        )
    if row is None:
        raise ProjectNotFoundError(name, f"not in the catalog for {url} (pre-label into it first)")
    return row
