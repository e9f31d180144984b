"""A seeded synthetic segmentation domain: textured shapes on textured backgrounds, as stills and as clips.

Every sample is a pure function of ``(domain, seed)``: the same arguments give the same pixels and masks on any
machine. Ground truth is the *visible* part of each object (objects are painted back to front, so later objects
occlude earlier ones); objects whose visible area is too small are dropped from stills.

``families`` / ``textures`` pick the shape families and textures drawn, so a later issue can create a domain shift
(e.g. train without ``"ring"`` and test with it). ``difficulty`` in [0, 1] scales clutter and contrast (easy-to-hard
curricula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FAMILIES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "star", "ring")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")
DATA_VERSION = "shapes-v1"

_MIN_VISIBLE_FRACTION = 0.25  # stills: drop objects that are mostly hidden
_MIN_VISIBLE_PIXELS = 48


@dataclass(frozen=True)
class SyntheticImage:
    """One still: ``image`` (H, W, 3) uint8, ``masks`` (N, H, W) bool visible masks, one family/texture per mask."""

    image: np.ndarray
    masks: np.ndarray
    families: tuple[str, ...]
    textures: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"SyntheticImage.image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.masks.ndim != 3 or self.masks.shape[1:] != self.image.shape[:2] or self.masks.dtype != np.bool_:
            raise ValueError(
                f"SyntheticImage.masks must be (N, {self.image.shape[0]}, {self.image.shape[1]}) bool, "
                f"got {self.masks.shape} {self.masks.dtype}"
            )
        if not (len(self.families) == len(self.textures) == self.masks.shape[0]):
            raise ValueError(
                f"SyntheticImage needs one family and texture per mask ({self.masks.shape[0]}), "
                f"got {len(self.families)} families and {len(self.textures)} textures"
            )


@dataclass(frozen=True)
class SyntheticClip:
    """A clip: ``frames`` (T, H, W, 3) uint8 and ``masks`` (T, N, H, W) bool: object n's visible mask per frame.

    A mask can be empty on a frame (the object left the frame or is fully hidden) and non-empty again later.
    ``amodal`` has the same shape: each object's whole in-frame silhouette, occluded parts included.
    """

    frames: np.ndarray
    masks: np.ndarray
    amodal: np.ndarray
    families: tuple[str, ...]
    textures: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"SyntheticClip.frames must be (T, H, W, 3) uint8, got {self.frames.shape}")
        t, h, w = self.frames.shape[:3]
        if self.masks.ndim != 4 or self.masks.shape[0] != t or self.masks.shape[2:] != (h, w):
            raise ValueError(f"SyntheticClip.masks must be ({t}, N, {h}, {w}), got {self.masks.shape}")
        if self.amodal.shape != self.masks.shape:
            raise ValueError(f"SyntheticClip.amodal must match masks {self.masks.shape}, got {self.amodal.shape}")
        if not (len(self.families) == len(self.textures) == self.masks.shape[1]):
            raise ValueError("SyntheticClip needs one family and texture per object")


@dataclass(frozen=True)
class _Shape:
    family: str
    texture: str
    colour: np.ndarray  # (3,) float 0..255
    colour2: np.ndarray
    aspect: float
    tex_freq: float
    tex_angle: float


@dataclass(frozen=True)
class SyntheticDomain:
    """The generator's parameters. ``image(seed)`` / ``clip(seed)`` draw samples; ``version`` names the data."""

    size: int = 256
    families: tuple[str, ...] = FAMILIES
    textures: tuple[str, ...] = TEXTURES
    n_objects: tuple[int, int] = (2, 5)
    radius: tuple[float, float] = (16.0, 56.0)
    difficulty: float = 1.0
    noise: float = 6.0

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"SyntheticDomain.size must be >= 32, got {self.size}")
        unknown = set(self.families) - set(FAMILIES)
        if not self.families or unknown:
            raise ValueError(f"SyntheticDomain.families must be a non-empty subset of {FAMILIES}, got {self.families}")
        unknown = set(self.textures) - set(TEXTURES)
        if not self.textures or unknown:
            raise ValueError(f"SyntheticDomain.textures must be a non-empty subset of {TEXTURES}, got {self.textures}")
        lo, hi = self.n_objects
        if not (1 <= lo <= hi):
            raise ValueError(f"SyntheticDomain.n_objects must be (lo, hi) with 1 <= lo <= hi, got {self.n_objects}")
        if not (0 < self.radius[0] <= self.radius[1]):
            raise ValueError(f"SyntheticDomain.radius must be (lo, hi) with 0 < lo <= hi, got {self.radius}")
        if self.radius[1] > self.size / 2:
            raise ValueError(
                f"SyntheticDomain.radius upper bound must be <= size / 2 = {self.size / 2}, got {self.radius}"
            )
        if not (0.0 <= self.difficulty <= 1.0):
            raise ValueError(f"SyntheticDomain.difficulty must be in [0, 1], got {self.difficulty}")

    @classmethod
    def scaled(cls, size: int, **kwargs: object) -> SyntheticDomain:
        """The default domain at another image size (object radii scale with it)."""
        lo, hi = cls.radius
        return cls(size=size, radius=(lo * size / 256, hi * size / 256), **kwargs)  # type: ignore[arg-type]

    @property
    def version(self) -> str:
        return (
            f"{DATA_VERSION}:size={self.size}:families={'+'.join(self.families)}:"
            f"textures={'+'.join(self.textures)}:objects={self.n_objects[0]}-{self.n_objects[1]}"
        )

    # ---------------------------------------------------------------- stills
    def image(self, seed: int) -> SyntheticImage:
        rng = np.random.default_rng([seed, 0x5EED])
        yy, xx = _grid(self.size)
        canvas = _background(rng, self.size, yy, xx, self.difficulty)
        lo, hi = self.n_objects
        n = int(rng.integers(lo, hi + 1))
        shapes = [self._shape(rng) for _ in range(n)]
        full: list[np.ndarray] = []
        for shape in shapes:
            r = float(rng.uniform(*self.radius))
            cx, cy = rng.uniform(r * 0.6, self.size - r * 0.6, size=2)
            angle = float(rng.uniform(0, 2 * math.pi))
            mask, colour = _render(shape, xx, yy, cx, cy, r, angle)
            canvas[mask] = colour[mask]
            full.append(mask)
        visible = _visible(full)
        keep = [
            i
            for i, (v, f) in enumerate(zip(visible, full, strict=True))
            if v.sum() >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * f.sum())
        ]
        image = _finish(canvas, rng, self.noise)
        masks = np.stack([visible[i] for i in keep]) if keep else np.zeros((0, self.size, self.size), bool)
        return SyntheticImage(
            image=image,
            masks=masks,
            families=tuple(shapes[i].family for i in keep),
            textures=tuple(shapes[i].texture for i in keep),
        )

    # ----------------------------------------------------------------- clips
    def clip(self, seed: int, n_frames: int = 8, motion: float = 1.0) -> SyntheticClip:
        """Objects move, rotate, scale, leave and re-enter the frame and pass behind each other (fixed depth order).

        ``motion`` in [0, 1] scales every movement (0: a still scene, only the sensor noise changes; a training
        curriculum starts there). The same seed gives the same scene and path at any ``motion``."""
        if n_frames < 1:
            raise ValueError(f"SyntheticDomain.clip n_frames must be >= 1, got {n_frames}")
        if not (0.0 <= motion <= 1.0):
            raise ValueError(f"SyntheticDomain.clip motion must be in [0, 1], got {motion}")
        rng = np.random.default_rng([seed, 0xC11F])
        yy, xx = _grid(self.size)
        background = _background(rng, self.size, yy, xx, self.difficulty)
        lo, hi = self.n_objects
        n = int(rng.integers(lo, hi + 1))
        shapes = [self._shape(rng) for _ in range(n)]
        s = float(self.size)
        motions = []
        for _ in range(n):
            r = float(rng.uniform(*self.radius))
            centre = rng.uniform(0.3 * s, 0.7 * s, size=2)
            amp = rng.uniform(0.1 * s, 0.55 * s, size=2)  # large amplitudes carry objects out and back in
            freq = rng.uniform(0.3, 1.0, size=2) * 2 * math.pi / max(n_frames, 2)
            phase = rng.uniform(0, 2 * math.pi, size=2)
            spin = float(rng.uniform(-0.25, 0.25))
            angle0 = float(rng.uniform(0, 2 * math.pi))
            zoom = float(rng.uniform(0.0, 0.3))
            motions.append((r, centre, amp, freq, phase, spin, angle0, zoom))
        frames, all_masks, all_full = [], [], []
        for t in range(n_frames):
            canvas = background.copy()
            full = []
            for shape, (r, centre, amp, freq, phase, spin, angle0, zoom) in zip(shapes, motions, strict=True):
                wave, pulse = np.sin(freq * t + phase), math.sin(0.7 * t + phase[0])
                if motion != 1.0:  # interpolate from the frame-0 pose (motion 1 keeps the original paths exactly)
                    wave = np.sin(phase) + motion * (wave - np.sin(phase))
                    pulse = math.sin(phase[0]) + motion * (pulse - math.sin(phase[0]))
                cx, cy = centre + amp * wave
                radius = r * (1.0 + zoom * pulse)
                mask, colour = _render(shape, xx, yy, float(cx), float(cy), radius, angle0 + spin * t * motion)
                canvas[mask] = colour[mask]
                full.append(mask)
            frame_rng = np.random.default_rng([seed, 0xC11F, t])
            frames.append(_finish(canvas, frame_rng, self.noise))
            all_masks.append(np.stack(_visible(full)))
            all_full.append(np.stack(full))
        return SyntheticClip(
            frames=np.stack(frames),
            masks=np.stack(all_masks),
            amodal=np.stack(all_full),
            families=tuple(sh.family for sh in shapes),
            textures=tuple(sh.texture for sh in shapes),
        )

    def _shape(self, rng: np.random.Generator) -> _Shape:
        family = str(self.families[int(rng.integers(len(self.families)))])
        texture = str(self.textures[int(rng.integers(len(self.textures)))])
        colour = rng.uniform(20, 235, size=3)
        contrast = 40 + 140 * (1.0 - 0.6 * self.difficulty) * float(rng.uniform(0.4, 1.0))
        colour2 = np.clip(colour + rng.choice([-1.0, 1.0], size=3) * contrast * rng.uniform(0.5, 1.0, 3), 0, 255)
        return _Shape(
            family=family,
            texture=texture,
            colour=colour,
            colour2=colour2,
            aspect=float(rng.uniform(0.5, 1.0)),
            tex_freq=float(rng.uniform(2.0, 5.0)),
            tex_angle=float(rng.uniform(0, math.pi)),
        )


def to_coco(samples: list[SyntheticImage]) -> tuple[dict, list[np.ndarray]]:
    """A COCO-style dataset dict (RLE segmentations) and the image arrays, in ``images`` order."""
    from model.masks import masks_to_boxes, masks_to_rles

    cats = {name: i + 1 for i, name in enumerate(FAMILIES)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    for image_id, sample in enumerate(samples, start=1):
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": f"synthetic_{image_id:06d}.png", "height": h, "width": w})
        arrays.append(sample.image)
        if sample.masks.shape[0] == 0:
            continue
        rles = masks_to_rles(sample.masks)
        boxes = masks_to_boxes(sample.masks)
        for rle, box, fam, mask in zip(rles, boxes, sample.families, sample.masks, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cats[fam],
                    "segmentation": rle,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for name, i in cats.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, arrays


# -------------------------------------------------------------------- helpers
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float32) + 0.5
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    return rows, cols


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray, difficulty: float) -> np.ndarray:
    base = rng.uniform(30, 225, size=3).astype(np.float32)
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    n_waves = 1 + int(rng.integers(0, 2 + round(2 * difficulty)))
    for _ in range(n_waves):
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(12, 120)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period + phase)
        amp = rng.uniform(-1, 1, size=3).astype(np.float32) * (12 + 30 * difficulty)
        canvas += wave[..., None] * amp
    if rng.random() < 0.3 + 0.4 * difficulty:  # coarse blotches
        cells = int(rng.integers(4, 12))
        blot = rng.normal(0, 1, size=(cells, cells, 3)).astype(np.float32) * (8 + 20 * difficulty)
        reps = -(-size // cells)
        canvas += np.kron(blot, np.ones((reps, reps, 1), np.float32))[:size, :size]
    return canvas


def _render(
    shape: _Shape, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """The object's full (unoccluded) mask and its colour image, texture fixed to the object's own frame."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (dx * c + dy * s) / radius
    v = (-dx * s + dy * c) / radius
    fam = shape.family
    if fam == "ellipse":
        mask = u**2 + (v / shape.aspect) ** 2 <= 1.0
    elif fam == "rectangle":
        mask = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9 * shape.aspect)
    elif fam == "triangle":
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):
            edge = -math.pi / 2 + k * 2 * math.pi / 3
            mask &= u * math.cos(edge) + v * math.sin(edge) <= 0.55
    elif fam == "star":
        r, th = np.hypot(u, v), np.arctan2(v, u)
        mask = r <= 0.62 + 0.38 * np.abs(np.cos(2.5 * th))
    elif fam == "ring":
        r = np.hypot(u, v / shape.aspect)
        mask = (r <= 1.0) & (r >= 0.55)
    else:  # pragma: no cover - guarded by SyntheticDomain
        raise ValueError(f"unknown shape family {fam!r}")
    tex = shape.texture
    if tex == "solid":
        weight = np.zeros_like(u)
    else:
        ta = shape.tex_angle
        p = (u * math.cos(ta) + v * math.sin(ta)) * shape.tex_freq
        q = (-u * math.sin(ta) + v * math.cos(ta)) * shape.tex_freq
        if tex == "stripes":
            weight = (np.floor(p) % 2).astype(np.float32)
        elif tex == "checker":
            weight = ((np.floor(p) + np.floor(q)) % 2).astype(np.float32)
        else:  # dots
            weight = ((p - np.round(p)) ** 2 + (q - np.round(q)) ** 2 <= 0.09).astype(np.float32)
    colour = shape.colour[None, None, :] * (1 - weight[..., None]) + shape.colour2[None, None, :] * weight[..., None]
    return mask, colour.astype(np.float32)


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each object when painted in list order (later objects on top)."""
    if not full:
        return []
    out: list[np.ndarray] = []
    above = np.zeros_like(full[0])
    for mask in reversed(full):
        out.append(mask & ~above)
        above = above | mask
    return out[::-1]


def _finish(canvas: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    noisy = canvas + rng.normal(0, noise, size=canvas.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)
