"""Label Studio labeling configs generated from a class list, and validation of results against them.

Label Studio silently drops (or stores but never shows) results whose ``from_name``/``to_name`` or label names do
not match the project's config, so every result is checked here before it is sent.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

MEDIA_KINDS = ("image", "video")
# tag name in the XML -> result ``type`` and the key of the label list inside ``value``
_LABEL_TAGS = {
    "BrushLabels": "brushlabels",
    "PolygonLabels": "polygonlabels",
    "RectangleLabels": "rectanglelabels",
    "Labels": "labels",
}
_OBJECT_TAGS = {"Image": "image", "Video": "video"}


def _color(i: int, n: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((i / max(n, 1)) % 1.0, 0.75, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = list(classes)
    if not names:
        raise ValueError("label config needs at least one class, got an empty class list")
    bad = [c for c in names if not isinstance(c, str) or not c.strip() or c != c.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings without surrounding spaces, got {bad!r}")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"class names must be unique, got duplicates {dupes!r}")
    return names


def _labels_xml(tag: str, name: str, to_name: str, classes: Sequence[str], extra: str = "") -> str:
    inner = "".join(
        f"\n    <Label value={quoteattr(c)} background={quoteattr(_color(i, len(classes)))}/>"
        for i, c in enumerate(classes)
    )
    return f'  <{tag} name="{name}" toName="{to_name}"{extra}>{inner}\n  </{tag}>'


def image_label_config(
    classes: Sequence[str], *, brush: bool = True, polygons: bool = False, rectangles: bool = False
) -> str:
    """``<Image name="image" value="$image">`` with BrushLabels ``brush`` (+ PolygonLabels ``polygon``,
    RectangleLabels ``rect``)."""
    names = _check_classes(classes)
    if not (brush or polygons or rectangles):
        raise ValueError("image label config needs at least one of brush, polygons, rectangles")
    parts = ["<View>", '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>']
    if brush:
        parts.append(_labels_xml("BrushLabels", "brush", "image", names))
    if polygons:
        parts.append(_labels_xml("PolygonLabels", "polygon", "image", names, ' strokeWidth="2" pointSize="small"'))
    if rectangles:
        parts.append(_labels_xml("RectangleLabels", "rect", "image", names))
    parts.append("</View>")
    return "\n".join(parts)


def video_label_config(classes: Sequence[str], *, framerate: float = 25.0) -> str:
    """``<Video name="video" value="$video">`` tracked with ``<VideoRectangle name="box">`` and ``<Labels name="videoLabels">``."""
    names = _check_classes(classes)
    if framerate <= 0:
        raise ValueError(f"video framerate must be positive, got {framerate}")
    return "\n".join(
        [
            "<View>",
            _labels_xml("Labels", "videoLabels", "video", names, ' allowEmpty="true"'),
            f'  <Video name="video" value="$video" framerate="{framerate:g}"/>',
            '  <VideoRectangle name="box" toName="video"/>',
            "</View>",
        ]
    )


@dataclass(frozen=True)
class ControlTag:
    name: str
    tag: str  # BrushLabels, PolygonLabels, RectangleLabels, Labels, VideoRectangle
    to_name: str
    labels: frozenset[str]


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config that results must match: object tags (name -> data key) and control tags."""

    xml: str
    objects: Mapping[str, str]  # object tag name -> data key ("image" -> "image")
    controls: Mapping[str, ControlTag] = field(default_factory=dict)
    framerates: Mapping[str, float] = field(default_factory=dict)  # <Video> name -> its framerate attribute

    @classmethod
    def parse(cls, xml: str) -> LabelConfig:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise ValueError(f"label config is not valid XML: {exc}") from exc
        objects: dict[str, str] = {}
        controls: dict[str, ControlTag] = {}
        framerates: dict[str, float] = {}
        for el in root.iter():
            if el.tag in _OBJECT_TAGS:
                objects[el.attrib["name"]] = el.attrib.get("value", "").lstrip("$")
                if el.tag == "Video" and "framerate" in el.attrib:
                    framerates[el.attrib["name"]] = float(el.attrib["framerate"])
            elif el.tag in _LABEL_TAGS or el.tag == "VideoRectangle":
                labels = frozenset(lab.attrib["value"] for lab in el.iter("Label"))
                controls[el.attrib["name"]] = ControlTag(el.attrib["name"], el.tag, el.attrib.get("toName", ""), labels)
        if not objects:
            raise ValueError("label config has no <Image> or <Video> object tag")
        return cls(xml=xml, objects=objects, controls=controls, framerates=framerates)

    @property
    def data_key(self) -> str:
        return next(iter(self.objects.values()))

    def _video_labels(self, to_name: str) -> frozenset[str]:
        return frozenset().union(
            *(c.labels for c in self.controls.values() if c.tag == "Labels" and c.to_name == to_name)
        )

    def validate_result(self, result: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the region when a result would be dropped or mis-shown by Label Studio."""
        rid = result.get("id", "?")
        from_name, to_name, rtype = result.get("from_name"), result.get("to_name"), str(result.get("type", ""))
        control = self.controls.get(str(from_name))
        if control is None:
            raise ValueError(
                f"result {rid!r}: from_name {from_name!r} is not a control tag of the config; expected one of {sorted(self.controls)}"
            )
        if to_name != control.to_name or to_name not in self.objects:
            raise ValueError(
                f"result {rid!r}: to_name {to_name!r} does not match control {control.name!r} (expected {control.to_name!r})"
            )
        expected_type = "videorectangle" if control.tag == "VideoRectangle" else _LABEL_TAGS[control.tag]
        if rtype.lower() != expected_type:
            raise ValueError(
                f"result {rid!r}: type {rtype!r} does not match control {control.name!r} (expected {expected_type!r})"
            )
        value = result.get("value")
        if not isinstance(value, Mapping):
            raise ValueError(f"result {rid!r}: 'value' must be a dict, got {type(value).__name__}")
        if control.tag == "VideoRectangle":
            allowed, labels = self._video_labels(control.to_name), value.get("labels", [])
            if not isinstance(value.get("sequence"), list) or not value["sequence"]:
                raise ValueError(f"result {rid!r}: videorectangle needs a non-empty 'sequence' list")
        else:
            allowed, labels = control.labels, value.get(expected_type)
            if not labels:
                raise ValueError(f"result {rid!r}: value.{expected_type} must list one label, got {labels!r}")
        unknown = [lab for lab in labels or [] if lab not in allowed]
        if unknown:
            raise ValueError(
                f"result {rid!r}: unknown label(s) {unknown!r} for control {control.name!r}; expected one of {sorted(allowed)}"
            )
        if expected_type == "brushlabels" and (value.get("format") != "rle" or not isinstance(value.get("rle"), list)):
            raise ValueError(f"result {rid!r}: brush value must have format 'rle' and an 'rle' list of ints")
        if expected_type in ("brushlabels", "polygonlabels", "rectanglelabels"):
            for key in ("original_width", "original_height"):
                if not isinstance(result.get(key), int) or result[key] <= 0:
                    raise ValueError(f"result {rid!r}: {key} must be a positive int, got {result.get(key)!r}")

    def validate_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        ids = []
        for result in results:
            self.validate_result(result)
            ids.append(result.get("id"))
        dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"result ids must be unique within a task, got duplicates {dupes!r}")


def label_config_for(media_kind: str, classes: Sequence[str], **options: Any) -> str:
    if media_kind == "image":
        return image_label_config(classes, **options)
    if media_kind == "video":
        return video_label_config(classes, **options)
    raise ValueError(f"media_kind must be one of {MEDIA_KINDS}, got {media_kind!r}")
