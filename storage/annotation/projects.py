"""The catalog's side of annotation projects, whatever the backend."""

from __future__ import annotations

from sqlalchemy import select

from storage.annotation.errors import ProjectNotFoundError
from storage.catalog import AnnotationProject, Catalog


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
