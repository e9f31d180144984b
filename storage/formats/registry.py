"""The exporters of ``maskloop versions export --format``: name -> :class:`~storage.formats.exporter.Exporter`.

Adding a format is one module with a ``write(source, out_dir)`` function (see :mod:`storage.formats.exporter`) and
one line in :data:`EXPORTERS`; the CLI's ``--format`` choices come from this table.
"""

from __future__ import annotations

from model.errors import MaskloopError
from storage.formats import coco, yolo_seg, youtube_vis
from storage.formats.export_layout import DATA_DIR, LABELS_FILE
from storage.formats.exporter import Exporter

EXPORTERS: dict[str, Exporter] = {
    "coco": Exporter(coco.write_coco, labels=LABELS_FILE, images_dir=DATA_DIR),
    "yolo-seg": Exporter(yolo_seg.write_yolo_seg, labels=yolo_seg.DATA_YAML, images_dir=yolo_seg.IMAGES_DIR),
    "youtube-vis": Exporter(
        youtube_vis.write_youtube_vis, labels=youtube_vis.YTVIS_FILE, images_dir=youtube_vis.FRAMES_DIR
    ),
}


class UnknownExportFormatError(MaskloopError, ValueError):
    """An export format that is not in :data:`EXPORTERS`."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"export format {name!r} is not known; choose one of {', '.join(EXPORTERS)}")


def exporter_for(name: str) -> Exporter:
    """The table's row for ``name``; :class:`UnknownExportFormatError` names the known formats."""
    try:
        return EXPORTERS[name]
    except KeyError:
        raise UnknownExportFormatError(name) from None
