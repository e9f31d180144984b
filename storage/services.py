"""The I/O one flow run uses, built once from :class:`~storage.settings.Settings` and passed down.

``Services`` holds the SQL catalog (opened, and migrated, once), the S3 client and the annotation backend (both made
on first use, so a run that never imports needs no annotation token). Task bodies take it as their first argument
instead of rebuilding clients from ``settings`` and a catalog URL. Each kind of I/O has its one retry layer inside
its client (:mod:`storage.retry`), so nothing here retries.

It crosses into the pre-label flow's I/O helper process by pickling as its settings (:meth:`__reduce__`): the
child rebuilds its own connections (without migrating) rather than inheriting sockets, once per settings for all of
its calls (``storage/io_helper/worker.py``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from storage.catalog.db import Catalog
from storage.settings import Settings

if TYPE_CHECKING:
    from storage.annotation.protocol import AnnotationBackend


class Services:
    """Catalog, S3 client and annotation backend of one process, from one ``Settings``. A context manager."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        self.catalog = Catalog.from_settings(settings, migrate=migrate)
        self._s3: Any = None
        self._annotation: AnnotationBackend | None = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        """The boto3 S3 client (thread-safe; made on first use)."""
        with self._lock:
            if self._s3 is None:
                from storage.s3 import make_client

                self._s3 = make_client(self.settings)
            return self._s3

    @property
    def annotation(self) -> AnnotationBackend:
        """The annotation backend (made on first use; raises a named error saying what to configure)."""
        with self._lock:
            if self._annotation is None:
                from storage.annotation.registry import annotation_backend

                self._annotation = annotation_backend(self.settings)
            return self._annotation

    def close(self) -> None:
        with self._lock:
            if self._annotation is not None:
                self._annotation.close()
                self._annotation = None
        self.catalog.dispose()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Settings]]:
        return (_reopened, (self.settings,))


def _reopened(settings: Settings) -> Services:
    """``Services`` unpickled in another process: its own connections, the schema left as the parent migrated it."""
    return Services(settings, migrate=False)
