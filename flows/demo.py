"""``maskloop demo``: the whole job on the embedded defaults.

Stack up (SeaweedFS S3, Label Studio, a Prefect server with a process worker and the S3 poller, all on loopback),
upload generated sample media (seeded synthetic shapes: images and a clip; no third-party media), pre-label them into
Label Studio, deploy the schedules and the upload trigger of ``deployments/prefect.yaml`` onto the stack's Prefect
server for the demo bucket (:func:`demo_spec`) and print where to correct them and where the Prefect UI is. From then
on an upload under ``s3://maskloop/samples/`` is pre-labelled with no other command (poller → event → trigger →
worker), and the hourly fan-out and 15-minute discovery run on their schedules.
The model is the configured SAM 2 checkpoint when it is on this machine; otherwise the offline demo model
``maskloop/shapes-tiny`` shipped in the repo, which segments the synthetic domain only.
"""

from __future__ import annotations

import io
import logging
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from storage.s3 import ensure_bucket, make_client
from storage.settings import Settings
from storage.stack.prefect_server import POLL_INTERVAL_S

if TYPE_CHECKING:
    from storage.stack.manager import Stack

log = logging.getLogger(__name__)

DEMO_BUCKET = "maskloop"
DEMO_PREFIX = "samples/"
DEMO_MODEL = "maskloop/shapes-tiny"
DEMO_MODEL_FILTERS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}


def sample_media(images: int = 12, clips: int = 1, seed: int = 2026) -> dict[str, bytes]:
    """Seeded synthetic sample media as {key: encoded bytes}: PNG images and H.264 MP4 clips."""
    from PIL import Image

    from model.synthetic import SyntheticDomain
    from model.video import write_video

    domain = SyntheticDomain()
    media: dict[str, bytes] = {}
    for i in range(images):
        buf = io.BytesIO()
        Image.fromarray(domain.image(seed + i).image).save(buf, "PNG")
        media[f"{DEMO_PREFIX}shapes-{i:03d}.png"] = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(clips):
            clip = domain.clip(seed + 1000 + i, n_frames=24)
            path = write_video(Path(tmp) / f"clip-{i}.mp4", list(clip.frames), fps=8)
            media[f"{DEMO_PREFIX}shapes-clip-{i:02d}.mp4"] = path.read_bytes()
    return media


def choose_model(settings: Settings) -> tuple[str, str]:
    """(model id, one line saying which model the demo uses and why). The configured checkpoint counts only when it
    is on this machine (a directory, a .pt file, or the Hugging Face cache): the demo never contacts the hub."""
    from model.cache import get_segmenter
    from model.errors import ModelNotAvailableError
    from tasks.models import device_of, resolve_model_id

    try:
        get_segmenter(resolve_model_id(settings.model_id), device=device_of(settings), local_files_only=True)
        return settings.model_id, f"model: {settings.model_id} (found on this machine)"
    except (ModelNotAvailableError, OSError) as error:
        reason = str(error).splitlines()[0][:200]
    try:
        get_segmenter(resolve_model_id(DEMO_MODEL), device=device_of(settings))
    except (ModelNotAvailableError, OSError) as error:
        raise ModelNotAvailableError(
            f"no model to run: SAM 2 '{settings.model_id}' is not on this machine ({reason}) and the bundled "
            f"{DEMO_MODEL} is missing ({error}); put a SAM 2 checkpoint on this machine and set MASKLOOP_MODEL_ID"
        ) from error
    return (
        DEMO_MODEL,
        f"model: {DEMO_MODEL}, the offline demo model (real SAM 2 '{settings.model_id}' is not on this machine: {reason})",
    )


def demo_spec(spec: dict[str, Any], model_id: str, strategy_params: dict[str, Any]) -> dict[str, Any]:
    """``deployments/prefect.yaml`` for the demo: sources and the upload trigger on ``s3://maskloop/samples/``, the
    demo's project, model and filters, exports into the demo bucket, and every deployment on ``maskloop-process``
    (the stack's worker; the embedded default has no GPU pool worker)."""
    source = f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
    prelabel = {"project": "maskloop-demo", "model_id": model_id, "strategy_params": strategy_params, "batch_size": 8}
    for item in spec["deployments"]:
        params = item.setdefault("parameters", {})
        if item["entrypoint"] == "flows/prelabel_fanout.py:prelabel_fanout_flow":  # one FanoutParams each
            for holder in [t["parameters"] for t in item.get("triggers") or []] or [params]:  # a trigger's is whole
                fanout = holder.setdefault("params", {})
                fanout.update(prelabel)
                if "{{" not in fanout.get("source", ""):
                    fanout["source"] = source
        values = params.get("params", params)  # a flow's parameters model, or its plain keyword parameters
        if "source" in values and "{{" not in values["source"]:
            values["source"] = source
        if "project" in values and not values["project"].startswith("maskloop-demo"):
            values["project"] = values["project"].replace("maskloop", "maskloop-demo", 1)
        if "dest" in values:
            values["dest"] = f"s3://{DEMO_BUCKET}/datasets/"
        for trigger in item.get("triggers") or []:
            trigger["match"] = {"prefect.resource.id": f"{source}*"}
        item["work_pool"] = {"name": "maskloop-process", "job_variables": {}}
    return spec


def deploy_demo(model_id: str, strategy_params: dict[str, Any], directory: Path) -> list[str]:
    """Apply :func:`demo_spec` (written to ``directory/prefect.yaml``) on the configured Prefect server."""
    from flows.deploy import DEPLOYMENTS_DIR, deploy

    spec = demo_spec(yaml.safe_load((DEPLOYMENTS_DIR / "prefect.yaml").read_text()), model_id, strategy_params)
    path = directory / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return deploy(gpu_slots=1, prefect_file=path).deployed


def _on_stack_prefect(stack: Stack) -> AbstractContextManager[Any]:
    """Prefect settings pointing this process at the stack's Prefect server, when it runs."""
    url = stack.prefect.running_api_url()
    if url is None:
        return nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url})


def run_demo(
    settings: Settings, keep_running: bool = True, stack: Stack | None = None, images: int = 12, clips: int = 1
) -> int:
    """The demo; ``keep_running=False`` runs it without Prefect server and schedules and stops the stack after."""
    from storage.stack.manager import Stack

    stack = stack or Stack(settings.data_dir)
    what = "S3 + Label Studio + Prefect server and worker" if keep_running else "S3 + Label Studio"
    print(f"starting the local stack ({what}; the first start migrates Label Studio, ~1 min) ...")
    stack.up(label_studio=True, prefect=keep_running, base=settings)
    with _on_stack_prefect(stack):
        return _run_demo(stack, stack.settings(settings), keep_running, images, clips)


def _run_demo(stack: Stack, settings: Settings, keep_running: bool, images: int, clips: int) -> int:
    from flows.prelabel import prelabel_flow
    from storage.params import PrelabelParams

    client = make_client(settings)
    ensure_bucket(client, DEMO_BUCKET)
    media = sample_media(images, clips)
    for key, body in media.items():
        client.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body)
    print(f"uploaded {len(media)} sample files to s3://{DEMO_BUCKET}/{DEMO_PREFIX} on {settings.s3_endpoint_url}")
    model_id, line = choose_model(settings)
    print(line)
    # shapes-tiny's IoU head is less confident than SAM 2's: its own filters (see its model card)
    params: dict[str, Any] = {"points_per_side": 16, **DEMO_MODEL_FILTERS} if model_id == DEMO_MODEL else {}
    result = prelabel_flow(
        PrelabelParams(
            source=f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}",
            model_id=model_id,
            project="maskloop-demo",
            batch_size=8,
            strategy_params=params,
        ),
        settings=settings,
    )
    c = result.count
    ls = stack.label_studio()
    print(
        f"\nrun {result.run_id}: {c('done')}/{c('assets')} new assets pre-labelled ({c('instances')} masks, "
        f"{c('failed')} failed) with {result.model_version}"
    )
    print(
        f"Label Studio: {ls.url}  (projects 'maskloop-demo (images)', 'maskloop-demo (videos)' and "
        "'maskloop-demo (video frames)')"
    )
    print(f"  login: {ls.credentials.username}  password: in {ls.data_dir / 'credentials.json'} (owner-only)")
    sheet = demo_report(settings, result.run_id)
    print(f"overlay sheet: {sheet}  (the masks and tracks of this run drawn on its media; open it in a browser)")
    print(f"catalog: {settings.resolved_database_url}; `maskloop runs show {result.run_id}` for details")
    if keep_running:
        with tempfile.TemporaryDirectory() as tmp:
            deployed = deploy_demo(model_id, params, Path(tmp))
        print(f"Prefect UI: {stack.prefect.url}  ({len(deployed)} deployments on the stack's server and worker)")
        print(
            f"  new uploads under s3://{DEMO_BUCKET}/{DEMO_PREFIX} are pre-labelled by the prelabel-on-upload trigger "
            f"(the stack polls the bucket every {POLL_INTERVAL_S:.0f} s), discovery runs every 15 min, the fan-out hourly"
        )
        print("the stack keeps running; `maskloop stack down` stops it")
    else:
        stack.down()
    print(video_frames_line(c("video_frames"), c("frame_tasks"), frames_project_url(settings, ls.url, "maskloop-demo")))
    return 0 if c("failed") == 0 else 1


def video_frames_line(video_frames: int, frame_tasks: int, project_url: str | None) -> str:
    """The demo's last line: how many video frames got masks and where a person corrects them (open-source Label
    Studio has no video masks: the key frames are image tasks of the '(video frames)' project)."""
    if not frame_tasks or project_url is None:
        return f"video masks: {video_frames} video frames pre-labelled, no key-frame tasks to correct them on"
    return (
        f"video masks: {video_frames} video frames pre-labelled, {frame_tasks} key frames with brush masks (one "
        f"region per track) to correct at {project_url}"
    )


def frames_project_url(settings: Settings, label_studio_url: str, project: str) -> str | None:
    """The Label Studio page of ``project``'s '(video frames)' project, None when it was not made."""
    from storage.annotation import ProjectNotFoundError, find_project
    from storage.annotation.projects import view_project
    from storage.catalog import Catalog

    with Catalog(settings.resolved_database_url) as catalog:
        try:
            row = find_project(catalog, view_project(project, "frames"), backend="label-studio", url=label_studio_url)
        except ProjectNotFoundError:
            return None
    return f"{label_studio_url.rstrip('/')}/projects/{row.external_project_id}/data"


def demo_report(settings: Settings, run_id: int) -> Path:
    """The run's HTML report (overlay sheet) under the data dir."""
    from storage.catalog import Catalog
    from storage.run_report import write_report

    with Catalog(settings.resolved_database_url) as catalog:
        return write_report(catalog, settings.cache_dir, run_id, settings.data_dir / "reports" / f"run-{run_id}.html")
