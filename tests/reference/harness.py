"""The project's side of the reference comparison: what both implementations are asked, how Meta's side is run (in
``.venv-ref``, through ``meta_side.py``), and the measures that compare their answers.

Meta's outputs are cached under ``test-artifacts/reference/<size>-<hash>`` keyed by the spec and ``meta_side.py``,
so a rerun on a developer machine only recomputes the project's side (CI starts from a clean clone).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
REF_PYTHON = REPO_ROOT / ".venv-ref" / "bin" / "python"
META_SIDE = Path(__file__).with_name("meta_side.py")
CACHE = REPO_ROOT / "test-artifacts" / "reference"

IMAGES = (
    SHARED_DATA / "coco128-seg" / "images" / "train2017" / "000000000009.jpg",
    SHARED_DATA / "sam2_notebooks" / "images" / "truck.jpg",
)
EVERYTHING_IMAGE = SHARED_DATA / "coco128-seg" / "images" / "train2017" / "000000000025.jpg"
DAVIS = SHARED_DATA / "davis2016_subset"
CLIP = "blackswan"
CLIP_FRAMES = 16
LATE_FRAME = 8
# the same settings on both sides; thresholds sit inside the spread of the seeded random weights' scores
# The random weights' masks all span most of the image (equal boxes), so box NMS would keep one mask: it is off
# here (1.0 suppresses nothing) and every candidate that passes the two filters is compared; NMS itself is covered by
# tests/model (torchvision's greedy semantics).
EVERYTHING = {
    "points_per_side": 8,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.6,
    "stability_score_thresh": 0.25,
    "stability_score_offset": 1.0,
    "mask_threshold": 0.0,
    "box_nms_thresh": 1.0,
}


@dataclass(frozen=True)
class Size:
    """One released architecture: Meta's packaged config and the checkpoint file name Meta publishes."""

    name: str
    config: str
    filename: str
    seed: int
    parts: tuple[str, ...] = ("image", "everything", "video")


# Video runs at Hiera-T only: ~15-21 s per frame per implementation on a 2-core CI machine (16 + 8 frames each).
SIZES = (
    Size("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 0),
    Size("small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 1, ("image", "everything")),
)


@dataclass(frozen=True)
class ImagePrompt:
    """One prompt in fractions of the image size (so it fits every photo)."""

    name: str
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    mask_input: bool = False
    multimask: bool = False

    def in_pixels(self, width: int, height: int) -> dict[str, Any]:
        scale = np.array([width, height], np.float64)
        return {
            "name": self.name,
            "points": None if self.points is None else (np.array(self.points) * scale).round(1).tolist(),
            "labels": None if self.labels is None else list(self.labels),
            "box": None if self.box is None else (np.array(self.box) * np.tile(scale, 2)).round(1).tolist(),
            "multimask": self.multimask,
        }


IMAGE_PROMPTS = (
    ImagePrompt("point", points=((0.5, 0.5),), labels=(1,)),
    ImagePrompt("points_negatives", points=((0.45, 0.5), (0.6, 0.4), (0.2, 0.8)), labels=(1, 1, 0)),
    ImagePrompt("box", box=(0.2, 0.25, 0.7, 0.8)),
    ImagePrompt("box_point", points=((0.45, 0.5),), labels=(1,), box=(0.2, 0.25, 0.7, 0.8)),
    ImagePrompt("mask_input", points=((0.5, 0.5),), labels=(1,), mask_input=True),
    ImagePrompt("multimask", points=((0.3, 0.6),), labels=(1,), multimask=True),
)


def mask_input_logits(size: int = 256) -> np.ndarray:
    """A (size, size) low-res logit map (+8 inside an off-centre ellipse, -8 outside) used as a mask prompt."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = ((xx - 0.45) / 0.25) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1.0
    return np.where(inside, 8.0, -8.0).astype(np.float32)


def clip_frames() -> list[Path]:
    return sorted((DAVIS / "JPEGImages" / "480p" / CLIP).glob("*.jpg"))[:CLIP_FRAMES]


def clip_mask(frame: int) -> np.ndarray:
    path = sorted((DAVIS / "Annotations" / "480p" / CLIP).glob("*.png"))[frame]
    return np.asarray(Image.open(path)) > 0


def _box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def video_objects(mask_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Objects prompted on frame 0 (a point on the swan, the swan's ground-truth mask as a mask prompt) and one
    added at ``LATE_FRAME`` (a box on the water below the swan)."""
    first = clip_mask(0)
    x0, y0, x1, y1 = _box_of(first)
    height, width = first.shape
    objects = [
        {"id": 1, "points": [[(x0 + x1) / 2, (y0 + y1) / 2]], "labels": [1]},
        {"id": 2, "mask": str(mask_path)},
    ]
    late = [{"id": 3, "frame": LATE_FRAME, "box": [width * 0.1, height * 0.75, width * 0.5, height * 0.95]}]
    return objects, late


def build_spec(size: Size, workdir: Path, threads: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "mask_input.npy", mask_input_logits())
    Image.fromarray(clip_mask(0).astype(np.uint8) * 255).save(workdir / "mask_prompt.png")
    prompts = []
    sizes = [Image.open(p).size for p in IMAGES]
    for prompt in IMAGE_PROMPTS:
        per_image = [prompt.in_pixels(w, h) for w, h in sizes]
        for entry in per_image:
            if prompt.mask_input:
                entry["mask_input"] = str(workdir / "mask_input.npy")
        prompts.append(per_image)
    objects, late = video_objects(workdir / "mask_prompt.png")
    return {
        "config": size.config,
        "seed": size.seed,
        "threads": threads,
        "checkpoint": str(workdir / size.filename),
        "image": {"paths": [str(p) for p in IMAGES], "prompts": prompts},
        "everything": {"paths": [str(EVERYTHING_IMAGE)], "params": EVERYTHING},
        "video": {"frames": [str(p) for p in clip_frames()], "objects": objects, "late": late},
    }


def _run_meta(command: str, spec_path: Path) -> float:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [str(REF_PYTHON), str(META_SIDE), command, str(spec_path)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"meta_side.py {command} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


@dataclass(frozen=True)
class Reference:
    """Meta's answers for one size, with the checkpoint both sides load."""

    size: Size
    spec: dict[str, Any]
    checkpoint: Path
    meta: dict[str, np.ndarray]
    meta_keys: list[str]

    @property
    def timings(self) -> dict[str, float]:
        return dict(json.loads(str(self.meta["timings"])))


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def reference_for(size: Size, threads: int = 2) -> Reference:
    """Build (or reuse) the seeded checkpoint and Meta's outputs for ``size``: one cached .npz per part, keyed by
    that part's spec and ``meta_side.py``."""
    workdir = CACHE / f"{size.name}-{_digest(size.config, size.seed)}"
    spec = build_spec(size, workdir, threads)
    code = META_SIDE.read_text()
    parts = size.parts
    spec["outputs"] = {
        part: str(workdir / f"meta-{part}-{_digest(spec[part], code)}.npz")
        for part in parts
        if not Path(workdir / f"meta-{part}-{_digest(spec[part], code)}.npz").is_file()
    }
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    if not Path(spec["checkpoint"]).is_file():
        _run_meta("build", spec_path)
    if spec["outputs"]:
        _run_meta("run", spec_path)
    meta: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    for part in parts:
        with np.load(workdir / f"meta-{part}-{_digest(spec[part], code)}.npz") as data:
            meta.update({k: data[k] for k in data.files if k != "timings"})
            timings.update(json.loads(str(data["timings"])))
    meta["timings"] = np.asarray(json.dumps(timings))
    keys = json.loads(Path(spec["checkpoint"] + ".keys.json").read_text())
    return Reference(size, spec, Path(spec["checkpoint"]), meta, keys)


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def match_one_to_one(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """For each of ``theirs`` the IoU with its partner in ``ours`` (greedy by IoU, each mask used once; 0 when
    unmatched)."""
    if len(theirs) == 0:
        return np.zeros((0,))
    if len(ours) == 0:
        return np.zeros((len(theirs),))
    a = ours.reshape(len(ours), -1).astype(np.float32)
    b = theirs.reshape(len(theirs), -1).astype(np.float32)
    inter = b @ a.T
    union = b.sum(1)[:, None] + a.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    best = np.zeros(len(theirs))
    used_rows, used_cols = set(), set()
    for flat in np.argsort(-iou, axis=None):
        r, c = divmod(int(flat), iou.shape[1])
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        best[r] = iou[r, c]
    return best


FIGURES = CACHE / "figures.json"


def record(size: str, section: str, name: str, **values: float | int | str) -> None:
    """Keep a measured figure for docs/reference-parity.md (``test-artifacts/reference/figures.json``)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}
    figures.setdefault(size, {}).setdefault(section, {})[name] = values
    FIGURES.write_text(json.dumps(figures, indent=1, sort_keys=True))
