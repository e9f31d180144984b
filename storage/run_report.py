"""A pre-label run's report: what it did (counts, timings per stage, images/s), what failed (S3 URI, stage, kind,
reason), what it predicted (instances per class, score histogram) and pictures of it (masks drawn over a sample of
images, a strip of frames with track ids per video), as one self-contained HTML page (pictures inlined) and as a
markdown summary (the Prefect artifact of the run).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from storage.catalog import Asset, Catalog, Prediction, PrelabelJob, Run, RunFailure
from storage.s3 import cache_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailureRow:
    uri: str
    stage: str
    kind: str
    reason: str


@dataclass
class RunSummary:
    """Everything a report says about one run, read from the catalog."""

    run_id: int
    flow_name: str
    status: str
    started_at: Any
    finished_at: Any
    source: str
    model_version: str
    job_id: int | None
    counts: dict[str, Any]
    timings: dict[str, Any]
    failures: list[FailureRow] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Tile:
    """One picture of the contact sheet: a title (the S3 URI) and a PNG."""

    title: str
    png: bytes


def summarize_run(catalog: Catalog, run_id: int) -> RunSummary:
    """The run's summary; ``ValueError`` when there is no such run."""
    from model.tracks import tracks_from_json

    with catalog.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"there is no run {run_id} in the catalog")
        job = session.get(PrelabelJob, run.job_id) if run.job_id is not None else None
        failures = [
            FailureRow(asset.uri, failure.stage, failure.kind, failure.reason)
            for failure, asset in session.execute(
                select(RunFailure, Asset)
                .join(Asset, Asset.id == RunFailure.asset_id)
                .where(RunFailure.run_id == run_id)
                .order_by(Asset.id)
            ).tuples()
        ]
        per_class: Counter[str] = Counter()
        scores: list[float] = []
        for (records,) in session.execute(select(Prediction.instances).where(Prediction.run_id == run_id)):
            for record in records:
                if "tracks" in record:  # a video's tracks
                    for track in tracks_from_json(record).tracks:
                        per_class[track.label] += 1
                        if track.frames:
                            scores.append(sum(f.score for f in track.frames) / len(track.frames))
                else:
                    per_class[str(record.get("label", "object"))] += 1
                    scores.append(float(record.get("score", float("nan"))))
        return RunSummary(
            run_id=run.id,
            flow_name=run.flow_name,
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
            source=str((run.parameters or {}).get("source", "")),
            model_version=job.model_version if job is not None else (run.model_id or ""),
            job_id=run.job_id,
            counts=dict(run.counts or {}),
            timings=dict(run.timings or {}),
            failures=failures,
            per_class=dict(per_class.most_common()),
            scores=scores,
        )


# -- pictures -------------------------------------------------------------------------------------------------------
def contact_sheet(
    catalog: Catalog, cache_dir: Path, run_id: int, *, images: int = 12, videos: int = 3, thumb: int = 220
) -> list[Tile]:
    """Overlay thumbnails of the run's predictions: masks over up to ``images`` images, and for up to ``videos``
    videos a strip of four frames with their tracks' boxes and ids. Media come from the download cache; what is no
    longer there is left out (logged)."""
    with catalog.session() as session:
        rows = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Prediction.run_id == run_id)
            .order_by(Asset.id)
        ).all()
    tiles: list[Tile] = []
    shown = Counter[str]()
    for asset, prediction in rows:
        if shown[asset.media_type] >= (images if asset.media_type == "image" else videos):
            continue
        path = cache_path(cache_dir, asset.bucket, asset.key, asset.etag)
        try:
            if asset.media_type == "image":
                tiles.append(Tile(asset.uri, _image_tile(path, asset, prediction.instances, thumb)))
            else:
                tiles.append(Tile(asset.uri, _video_strip(path, prediction.instances[0], thumb)))
            shown[asset.media_type] += 1
        except (OSError, ValueError) as exc:
            log.info("report: no picture of %s (%s)", asset.uri, exc)
    return tiles


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _image_tile(path: Path, asset: Asset, records: list[dict[str, Any]], thumb: int) -> bytes:
    from model.images import decode_image
    from model.instances import Instances
    from model.overlay import blend_masks, color_of, thumbnail

    rgb = decode_image(path.read_bytes(), asset.uri)
    instances = Instances.from_records(records, rgb.shape[0], rgb.shape[1])
    colors = [color_of(i) for i in range(len(instances))]  # one colour per instance: neighbours stay apart
    drawn = blend_masks(rgb, instances.masks, colors) if len(instances) else rgb
    return _png(thumbnail(drawn, thumb))


def _video_strip(path: Path, tracks_json: dict[str, Any], thumb: int, frames: int = 4) -> bytes:
    from PIL import Image

    from model.overlay import color_of, draw_boxes, thumbnail
    from model.tracks import tracks_from_json
    from model.video import iter_frames

    video = tracks_from_json(tracks_json)
    sampled = video.sampled_frames or list(range(video.frame_count))
    if not sampled:
        raise ValueError("the video has no sampled frames")
    step = max(1, len(sampled) // frames)
    wanted = set(sampled[::step][:frames])
    pictures = []
    for frame in iter_frames(path, strict=False):
        if frame.index in wanted:
            here = [(t, f) for t in video.tracks for f in t.frames if f.frame_index == frame.index]
            drawn = draw_boxes(
                frame.rgb,
                [f.box for _, f in here],
                [f"#{t.track_id} {t.label}" for t, _ in here],
                [color_of(t.track_id) for t, _ in here],
            )
            pictures.append(thumbnail(drawn, thumb))
        if len(pictures) == len(wanted):
            break
    if not pictures:
        raise ValueError("no frame of the video could be decoded")
    strip = Image.new(
        "RGB", (sum(p.width for p in pictures) + 4 * len(pictures), max(p.height for p in pictures)), "white"
    )
    x = 0
    for picture in pictures:
        strip.paste(picture, (x, 0))
        x += picture.width + 4
    return _png(strip)


# -- rendering ------------------------------------------------------------------------------------------------------
def _rows(summary: RunSummary) -> list[tuple[str, str]]:
    t, c = summary.timings, summary.counts
    return [
        ("status", summary.status),
        ("source", summary.source or "-"),
        ("model version", summary.model_version or "-"),
        ("job", str(summary.job_id) if summary.job_id is not None else "-"),
        ("assets", f"{c.get('done', 0)} of {c.get('assets', 0)} pre-labelled, {c.get('failed', 0)} failed"),
        ("instances", str(c.get("instances", 0))),
        ("existing tasks", f"{c.get('refreshed', 0)} refreshed, {c.get('kept', 0)} kept (annotated)"),
        ("wall time", f"{t.get('seconds', 0)} s ({t.get('assets_per_s', 0)} assets/s)"),
        (
            "stage time",
            f"fetch {t.get('fetch_seconds', 0)} s, model {t.get('model_seconds', 0)} s, "
            f"import {t.get('import_seconds', 0)} s",
        ),
    ]


def markdown(summary: RunSummary) -> str:
    """The summary as markdown (the Prefect artifact of the run): the table, per-class counts and failures."""
    lines = [f"# {summary.flow_name} run {summary.run_id}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(summary)]
    if summary.per_class:
        lines += ["", "| class | instances |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary.per_class.items()]
    if summary.failures:
        lines += ["", "| S3 URI | stage | kind | reason |", "|---|---|---|---|"]
        lines += [f"| {f.uri} | {f.stage} | {f.kind} | {f.reason.replace('|', '/')} |" for f in summary.failures]
    return "\n".join(lines) + "\n"


def _histogram_svg(scores: Sequence[float], bins: int = 10, width: int = 360, height: int = 120) -> str:
    from model.overlay import histogram_counts

    counts = histogram_counts(scores, bins)
    top = max(counts, default=0) or 1
    bar_w = width / bins
    bars = "".join(
        f'<rect x="{i * bar_w + 1:.1f}" y="{height - 20 - (height - 30) * n / top:.1f}" width="{bar_w - 2:.1f}" '
        f'height="{(height - 30) * n / top:.1f}" fill="#0082c8"><title>{i / bins:.1f}-{(i + 1) / bins:.1f}: {n}</title></rect>'
        for i, n in enumerate(counts)
    )
    axis = "".join(
        f'<text x="{i * bar_w:.1f}" y="{height - 5}" font-size="10">{i / bins:.1f}</text>' for i in range(0, bins, 2)
    )
    return f'<svg width="{width}" height="{height}" role="img" aria-label="score histogram">{bars}{axis}</svg>'


def render_html(summary: RunSummary, tiles: Sequence[Tile]) -> str:
    e = html.escape
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _rows(summary))
    classes = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in summary.per_class.items())
    failures = "".join(
        f"<tr><td>{e(f.uri)}</td><td>{e(f.stage)}</td><td>{e(f.kind)}</td><td>{e(f.reason)}</td></tr>"
        for f in summary.failures
    )
    pictures = "".join(
        f'<figure><img alt="{e(t.title)}" src="data:image/png;base64,{base64.b64encode(t.png).decode()}">'
        f"<figcaption>{e(t.title)}</figcaption></figure>"
        for t in tiles
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>maskloop run {summary.run_id}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }} th, td {{ border: 1px solid #ddd; padding: 4px 8px;
text-align: left; vertical-align: top; }} th {{ background: #f4f4f4; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 10px; }} figure {{ margin: 0; }}
figcaption {{ font-size: 11px; color: #555; max-width: 460px; overflow-wrap: anywhere; }}
</style></head><body>
<h1>{e(summary.flow_name)} run {summary.run_id}</h1>
<table>{table}</table>
<h2>Instances per class</h2><table><tr><th>class</th><th>instances</th></tr>{classes}</table>
<h2>Score histogram</h2><p>predicted IoU per instance (mean per track for videos), {len(summary.scores)} values</p>
{_histogram_svg(summary.scores)}
<h2>Failures ({len(summary.failures)})</h2>
<table><tr><th>S3 URI</th><th>stage</th><th>kind</th><th>reason</th></tr>{failures}</table>
<h2>What was pre-labelled</h2><div class="sheet">{pictures}</div>
</body></html>
"""


def write_report(catalog: Catalog, cache_dir: Path, run_id: int, path: Path) -> Path:
    """Write the run's self-contained HTML report to ``path``; returns it."""
    summary = summarize_run(catalog, run_id)
    page = render_html(summary, contact_sheet(catalog, cache_dir, run_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
