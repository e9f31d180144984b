"""``maskloop active-learning``: its options come from ActiveLearningParams and keep the flags people know."""

from __future__ import annotations

import argparse

import pytest

from flows.options import params_from
from storage.params import ActiveLearningParams


def _parse(*argv: str) -> ActiveLearningParams:
    from flows.cli import build_parser

    args = build_parser().parse_args(["active-learning", *argv])
    assert args.func.__name__ == "cmd_active_learning"
    return params_from(args, ActiveLearningParams)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["p"], ActiveLearningParams(project="p")),
        (
            ["p", "--strategy", "hybrid", "--budget", "20", "--weight", "stability=2", "--weight", "predicted_iou=0.5"],
            ActiveLearningParams(
                project="p", strategy="hybrid", budget=20, confidence_weights={"stability": 2.0, "predicted_iou": 0.5}
            ),
        ),
        (
            ["p", "--no-finetune", "--no-review-view", "--no-calibrate", "--held-out", "0.5", "--threads", "2"],
            ActiveLearningParams(
                project="p", finetune=False, review_view=False, calibrate=False, held_out_fraction=0.5, num_threads=2
            ),
        ),
        (
            ["p", "--model", "m", "--finetune-from", "initial", "--freeze", "image_encoder"],
            ActiveLearningParams(project="p", model_id="m", finetune_from="initial", freeze=("image_encoder",)),
        ),
        (["p", "--freeze"], ActiveLearningParams(project="p", freeze=())),  # nothing frozen: train everything
        (
            ["p", "--dest", "s3://b/d", "--dataset", "ds", "--gpu-limit", "gpu"],
            ActiveLearningParams(project="p", dest="s3://b/d", dataset="ds", gpu_limit="gpu"),
        ),
    ],
)
def test_options_give_the_params_the_user_meant(argv: list[str], expected: ActiveLearningParams) -> None:
    assert _parse(*argv) == expected


@pytest.mark.parametrize(
    "argv",
    [["p", "--strategy", "entropy"], ["p", "--freeze", "neck"], ["p", "--finetune-from", "scratch"]],
)
def test_values_outside_the_choices_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert "invalid choice" in capsys.readouterr().err


def test_a_weight_without_a_value_is_refused_naming_the_option() -> None:
    with pytest.raises(SystemExit, match="--weight expects NAME=VALUE"):
        _parse("p", "--weight", "stability")


def test_every_field_is_an_option() -> None:
    from flows.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["active-learning"]._actions} - {"help", "func"}
    assert dests == set(ActiveLearningParams.model_fields)
