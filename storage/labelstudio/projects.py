"""Label Studio projects, one per (dataset, media kind), recorded in the SQL catalog.

* :func:`ensure_project` -- the catalog's row for a project, the Label Studio project created when missing (or
  adopted when a crashed run created it), its labeling config generated from the class list and updated when the
  list changes, uncertainty sampling (low prediction score first).
* :func:`project_lock` -- what must not interleave between two imports into one project, on this host.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from storage.catalog import AnnotationProject, Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.config import MEDIA_KINDS, label_config_for

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
BACKEND_NAME = "label-studio"  # AnnotationProject.backend of the projects made here


@contextmanager
def project_lock(url: str, name: str) -> Iterator[None]:
    """Held, on this host, around what must not interleave between two imports into one Label Studio project (two
    batches of a run, or two runs): creating the project, and the count-post-record of new tasks (tasks another
    import has posted but not yet recorded would look like a crashed run's to this one). An ``flock`` on a file in
    the temp directory: it excludes threads (each opens the file) and processes (the I/O helper, the flow's threads)."""
    key = hashlib.sha256(f"{url}\0{name}".encode()).hexdigest()[:32]
    with open(Path(tempfile.gettempdir()) / f"maskloop-ls-project-{key}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_project(
    client: LabelStudioClient,
    catalog: Catalog,
    name: str,
    media_kind: str,
    classes: Sequence[str],
    **config_options: Any,
) -> AnnotationProject:
    """The catalog's project row for (server, ``name``), creating the Label Studio project when missing.

    ``config_options`` go to the config generator (images: ``brush``, ``polygons``, ``rectangles``; videos:
    ``framerate``). A changed class list updates the project's labeling config.
    """
    if media_kind not in MEDIA_KINDS:
        raise ValueError(f"media_kind must be one of {MEDIA_KINDS}, got {media_kind!r}")
    label_config = label_config_for(media_kind, classes, **config_options)
    with catalog.session() as session:  # the common case: it exists, with this config
        row = session.scalar(
            select(AnnotationProject).where(
                AnnotationProject.backend == BACKEND_NAME,
                AnnotationProject.backend_url == client.url,
                AnnotationProject.name == name,
            )
        )
        if row is not None and row.media_kind == media_kind and row.label_config == label_config:
            return row
    with project_lock(client.url, name):  # created or changed by one import at a time
        return _ensure_project(client, catalog, name, media_kind, classes, label_config)


def _ensure_project(
    client: LabelStudioClient,
    catalog: Catalog,
    name: str,
    media_kind: str,
    classes: Sequence[str],
    label_config: str,
) -> AnnotationProject:
    with catalog.session() as session:
        row = session.scalar(
            select(AnnotationProject).where(
                AnnotationProject.backend == BACKEND_NAME,
                AnnotationProject.backend_url == client.url,
                AnnotationProject.name == name,
            )
        )
        if row is not None:
            if row.media_kind != media_kind:
                raise ValueError(f"Label Studio project {name!r} holds {row.media_kind} tasks, asked for {media_kind}")
            if row.label_config != label_config:
                client.update_project(row.external_project_id, label_config=label_config)
                row.label_config, row.classes = label_config, list(classes)
            return row
        existing = client.list_projects(title=name)  # created by a run that crashed before its commit
        if existing:
            ls_project = existing[0]
            client.update_project(
                ls_project["id"], label_config=label_config, sampling=UNCERTAINTY_SAMPLING, show_collab_predictions=True
            )
        else:
            ls_project = client.create_project(
                name,
                label_config,
                description=f"maskloop pre-labels ({media_kind})",
                sampling=UNCERTAINTY_SAMPLING,
                show_collab_predictions=True,
            )
        row = AnnotationProject(
            backend=BACKEND_NAME,
            backend_url=client.url,
            name=name,
            external_project_id=int(ls_project["id"]),
            media_kind=media_kind,
            classes=list(classes),
            label_config=label_config,
        )
        session.add(row)
        session.flush()
        return row
