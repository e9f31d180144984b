"""CLI options come from the parameter models: every field is an option, parsed back into the same model."""

from __future__ import annotations

import argparse

import pytest

from flows.options import add_options, params_from
from model.strategies import STRATEGIES
from storage.params import FanoutParams, PrelabelParams


def _parser(model: type = PrelabelParams) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, model, choices={"strategy": list(STRATEGIES)})
    return parser


def test_every_field_of_the_model_is_an_option_of_the_cli() -> None:
    parser = _parser()
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests == set(PrelabelParams.model_fields)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["s3://b/p"], PrelabelParams(source="s3://b/p")),
        (
            ["s3://b/p", "--strategy", "text", "--classes", "cat", "dog", "--model", "m", "--video-fps", "5"],
            PrelabelParams(
                source="s3://b/p", strategy="text", classes=("cat", "dog"), model_id="m", video_target_fps=5
            ),
        ),
        (
            ["s3://b/p", "--param", "points_per_side=16", "--param", "max_masks=null", "--param", "filter_at=original"],
            PrelabelParams(
                source="s3://b/p",
                strategy_params={"points_per_side": 16, "max_masks": None, "filter_at": "original"},
            ),
        ),
        (["s3://b/p", "--retry-failed", "--limit", "3"], PrelabelParams(source="s3://b/p", retry_failed=True, limit=3)),
    ],
)
def test_parsed_options_give_the_model_the_user_meant(argv: list[str], expected: PrelabelParams) -> None:
    assert params_from(_parser().parse_args(argv), PrelabelParams) == expected


def test_a_pair_without_equals_sign_is_refused_naming_the_option() -> None:
    with pytest.raises(SystemExit, match="--param expects NAME=VALUE"):
        params_from(_parser().parse_args(["s3://b/p", "--param", "points_per_side"]), PrelabelParams)


def test_a_strategy_not_in_the_registry_is_not_an_option() -> None:
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parser().parse_args(["s3://b/p", "--strategy", "magic"])


def test_subclass_fields_become_options_with_the_models_defaults() -> None:
    args = _parser(FanoutParams).parse_args(["s3://b/p", "--unit-size", "8"])
    assert params_from(args, FanoutParams) == FanoutParams(source="s3://b/p", unit_size=8)
