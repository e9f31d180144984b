"""``maskloop demo``: the whole job on the embedded defaults.

Stack up (SeaweedFS S3 + Label Studio on loopback), upload generated sample media (seeded synthetic shapes: images
and a clip; no third-party media), pre-label them into Label Studio and print where to correct them.
The model is the configured SAM 2 checkpoint when it is on this machine; otherwise the offline demo model
``maskloop/shapes-tiny`` shipped in the repo, which segments the synthetic domain only.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

from storage.s3 import ensure_bucket, make_client
from storage.settings import Settings

log = logging.getLogger(__name__)

DEMO_BUCKET = "maskloop"
DEMO_PREFIX = "samples/"
DEMO_MODEL = "maskloop/shapes-tiny"
DEMO_MODEL_FILTERS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}


def sample_media(images: int = 12, clips: int = 1, seed: int = 2026) -> dict[str, bytes]:
    """Seeded synthetic sample media as {key: encoded bytes}: PNG images and H.264 MP4 clips."""
    from PIL import Image

    from model.synthetic import SyntheticDomain
    from model.video_testing import write_video

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


def run_demo(settings: Settings, keep_running: bool = True) -> int:
    from flows.prelabel import prelabel_flow
    from storage.stack.manager import Stack

    stack = Stack(settings.data_dir)
    print("starting the local stack (S3 + Label Studio; the first start migrates Label Studio, ~1 min) ...")
    stack.up(label_studio=True)
    settings = stack.settings(settings)
    client = make_client(settings)
    ensure_bucket(client, DEMO_BUCKET)
    media = sample_media()
    for key, body in media.items():
        client.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body)
    print(f"uploaded {len(media)} sample files to s3://{DEMO_BUCKET}/{DEMO_PREFIX} on {settings.s3_endpoint_url}")
    model_id, line = choose_model(settings)
    print(line)
    # shapes-tiny's IoU head is less confident than SAM 2's: its own filters (see its model card)
    params = {"points_per_side": 16, **DEMO_MODEL_FILTERS} if model_id == DEMO_MODEL else {}
    result = prelabel_flow(
        f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}",
        model_id=model_id,
        project="maskloop-demo",
        batch_size=8,
        strategy_params=params,
        settings=settings,
    )
    ls = stack.label_studio()
    print(
        f"\nrun {result['run_id']}: {result['done']}/{result['assets']} new assets pre-labelled ({result['instances']} masks, "
        f"{result['failed']} failed) with {result['model_version']}"
    )
    print(f"Label Studio: {ls.url}  (projects 'maskloop-demo (images)' and 'maskloop-demo (videos)')")
    print(f"  login: {ls.credentials.username}  password: in {ls.data_dir / 'credentials.json'} (owner-only)")
    print(f"catalog: {settings.resolved_database_url}; `maskloop runs show {result['run_id']}` for details")
    if keep_running:
        print("the stack keeps running; `maskloop stack down` stops it")
    else:
        stack.down()
    return 0 if result["failed"] == 0 else 1
