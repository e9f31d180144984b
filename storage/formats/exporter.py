"""What an exporter is given and what it gives back; the table of exporters is :mod:`storage.formats.registry`.

An exporter is a function ``write(source, out_dir)``: ``source`` holds the version's items as
:class:`model.instances.Instances` (one per exported image or video frame, with the file name, width and height the
export gives it) and its class names; the function writes its label files into ``out_dir`` and returns one
:class:`ExportedFile` per file or folder written, for the summary ``maskloop versions export`` prints. The image
files themselves are written by ``export_version`` under :attr:`Exporter.images_dir`, named as the items say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.instances import Instances


@dataclass(frozen=True)
class ExportItem:
    """One exported image (``frame_index`` -1: its file is ``<images_dir>/<file_name>``) or video frame
    (``frame_index`` >= 0, ``file_name`` ``<video file>#frame=<n>``: no file of its own in the export)."""

    file_name: str
    width: int
    height: int
    frame_index: int
    instances: Instances


@dataclass(frozen=True)
class ExportSource:
    """A version as exporters see it. ``items`` may be iterated more than once; ``coco`` is the version's frozen
    COCO with export file names (:func:`storage.formats.export_layout.plan_export`), None where there is none."""

    classes: tuple[str, ...]
    items: Iterable[ExportItem]
    coco: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ExportedFile:
    """One line of the export summary: a file or folder relative to the export directory, and what it holds."""

    name: str
    summary: str


@dataclass(frozen=True)
class Exporter:
    """One row of the exporter table: the function, the file a reader opens (``labels``) and the folder the image
    files go to (``images_dir``), both relative to the export directory."""

    write: Callable[[ExportSource, Path], Sequence[ExportedFile]]
    labels: str
    images_dir: str


class CocoItems:
    """The items of a COCO dict (images in COCO order) as :class:`ExportItem`, masks decoded one image at a time.

    Box-only annotations (video frames) decode to their box. Iterable more than once; nothing is held in memory
    between items.
    """

    def __init__(self, coco: Mapping[str, Any]) -> None:
        self.coco = coco

    def __len__(self) -> int:
        return len(self.coco.get("images", []))

    def __iter__(self) -> Iterator[ExportItem]:
        from storage.formats.coco import load_coco

        index = load_coco(self.coco)
        names = {c["id"]: c["name"] for c in self.coco.get("categories", [])}
        for image in self.coco.get("images", []):
            height, width = int(image["height"]), int(image["width"])
            anns = index.loadAnns(index.getAnnIds(imgIds=[image["id"]]))
            if anns:
                x, y, w, h = np.array([a["bbox"] for a in anns], np.float32).T
                instances = Instances(
                    masks=np.stack([index.annToMask(a).astype(bool) for a in anns]),
                    boxes=np.stack([x, y, x + w, y + h], axis=1),
                    labels=[names[a["category_id"]] for a in anns],
                )
            else:
                instances = Instances.empty(height, width)
            yield ExportItem(
                str(image["file_name"]), width, height, int(image.get("maskloop_frame_index", -1)), instances
            )
