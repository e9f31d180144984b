"""``maskloop finetune``: train a SAM 2 checkpoint from a COCO export or the synthetic domain, or run a recipe.

    maskloop finetune --recipe shapes-tiny --out runs/shapes-tiny --budget-s 3600
    maskloop finetune --recipe shapes-tiny-video --from runs/shapes-tiny/best --out runs/shapes-tiny-video
    maskloop finetune --from model/weights/shapes-tiny --data export/coco.json --freeze image_encoder --out runs/x
    maskloop finetune --from model/weights/shapes-tiny --data synthetic:families=ellipse+ring --steps 200 --out runs/y

``--data`` is a COCO json file (images are read from its directory by ``file_name``, or from ``--images``) or
``synthetic[:families=a+b][:textures=c+d]`` for the seeded synthetic domain.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from model.errors import BadMediaError
from model.finetune.config import FREEZABLE, FinetuneConfig
from model.finetune.data import CocoSource, ImageSource, SyntheticSource
from model.finetune.modelio import image_size
from model.synthetic import FAMILIES, TEXTURES, SyntheticDomain


def parse_synthetic(spec: str, size: int) -> SyntheticDomain:
    """``synthetic[:families=a+b][:textures=c+d]`` -> the domain it names."""
    parts = spec.split(":")
    if parts[0] != "synthetic":
        raise ValueError(f"synthetic data spec must start with 'synthetic', got {spec!r}")
    families, textures = FAMILIES, TEXTURES
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "families":
            families = tuple(value.split("+"))
        elif key == "textures":
            textures = tuple(value.split("+"))
        else:
            raise ValueError(f"unknown synthetic option {key!r} in {spec!r}; expected families= or textures=")
    return SyntheticDomain.scaled(size, families=families, textures=textures)


def load_coco(path: Path, images_dir: Path | None, size: int) -> CocoSource:
    dataset = json.loads(path.read_text())
    root = images_dir if images_dir is not None else path.parent
    used = {int(a["image_id"]) for a in dataset.get("annotations", [])}
    arrays: dict[int, np.ndarray] = {}
    for info in dataset.get("images", []):
        if int(info["id"]) not in used:
            continue
        file = root / str(info["file_name"])
        try:
            with Image.open(file) as im:
                arrays[int(info["id"])] = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise BadMediaError(str(file), f"cannot be read as an image ({exc})") from exc
    return CocoSource(dataset, arrays, image_size=size, version=f"coco:{path.name}")


def _data(spec: str, images_dir: Path | None, size: int) -> ImageSource:
    if spec.startswith("synthetic"):
        return SyntheticSource(parse_synthetic(spec, size))
    return load_coco(Path(spec), images_dir, size)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="maskloop finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe",
        help="a named recipe (shapes-tiny, shapes-tiny-continue, shapes-tiny-video); ignores --data, and --from "
        "except as the base of shapes-tiny-continue or shapes-tiny-video",
    )
    parser.add_argument("--from", dest="base", type=Path, help="checkpoint directory to start from")
    parser.add_argument("--data", help="COCO json path or synthetic[:families=...]")
    parser.add_argument("--images", type=Path, help="image directory for a COCO json (default: next to it)")
    parser.add_argument("--freeze", action="append", default=[], choices=FREEZABLE)
    parser.add_argument("--out", type=Path, required=True, help="run directory (best checkpoint in OUT/best)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--budget-s", type=float)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from model.finetune.engine import finetune
    from model.finetune.recipes import BASED_RECIPES, RECIPES, run_recipe

    if args.recipe:
        if args.recipe not in RECIPES:
            parser.error(f"unknown recipe {args.recipe!r}; expected one of {sorted(RECIPES)}")
        extra = {"base": args.base} if args.base is not None and args.recipe in BASED_RECIPES else {}
        result = run_recipe(
            args.recipe,
            args.out,
            budget_s=args.budget_s,
            seed=args.seed,
            device=args.device,
            num_threads=args.threads,
            **extra,
        )
    else:
        if args.base is None or args.data is None:
            parser.error("--from and --data are required unless --recipe is given")
        from model.finetune.modelio import load_model

        size = image_size(load_model(args.base))
        data = _data(args.data, args.images, size)
        config = FinetuneConfig(
            out_dir=args.out,
            data=data,
            base=args.base,
            freeze=tuple(args.freeze),
            steps=args.steps,
            budget_s=args.budget_s,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            num_threads=args.threads,
            warmup_steps=min(100, max(1, args.steps // 10)),
            model_id=f"{args.base.name}-finetuned",
        )
        result = finetune(config)
    best = result.best_metrics
    shown = [k for k in ("box_iou", "point_iou", "j_box", "j_mask") if k in best]
    print(
        f"{result.steps} steps in {result.seconds:.0f} s; best checkpoint {result.best_dir} "
        f"({', '.join(f'{k} {best[k]:.3f}' for k in shown)})"
    )
    return 0
