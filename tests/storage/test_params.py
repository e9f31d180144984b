"""The flows' parameter models reject what a run cannot do, with the reason, and say what makes a job."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from storage.params import FanoutParams, PrelabelParams, UnitParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "magic"}, "strategy must be one of everything, text, prior, concept"),
        ({"strategy": "text"}, "needs at least one class name"),
        ({"batch_size": 0}, "batch_size"),
        ({"project": "x" * 36}, "project must be 1..35"),
        ({"project": ""}, "project must be 1..35"),
        ({"source": "bucket/x"}, "s3://bucket/prefix"),
        ({"strategy_params": {"points_per_sid": 8}}, "does not take \\['points_per_sid'\\]"),
        ({"strategy": "text", "classes": ["cat"], "strategy_params": {"points_per_side": 8}}, "does not take"),
        ({"video_every": 0}, "video_every"),
        ({"colour": "red"}, "colour"),  # a typo is an error, not a silently ignored field
    ],
)
def test_bad_prelabel_parameters_are_rejected_with_a_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PrelabelParams.model_validate({"source": "s3://bucket/x", **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "prompts"),
    [
        ({}, {}),
        ({"video_every": 1, "key_frame_interval": 30}, {}),  # the defaults stated explicitly are still the defaults
        ({"classes": ["cat"], "strategy": "text"}, {"classes": ["cat"]}),
        ({"strategy_params": {"points_per_side": 16}}, {"params": {"points_per_side": 16}}),
        ({"video_every": 2, "video_max_frames": 8}, {"video": {"video_every": 2, "video_max_frames": 8}}),
    ],
)
def test_prompts_name_only_what_differs_from_the_defaults(kwargs: dict[str, Any], prompts: dict[str, Any]) -> None:
    assert PrelabelParams(source="s3://b/p", **kwargs).prompts == prompts


def test_fanout_rejects_a_heartbeat_that_would_outlive_its_lease() -> None:
    with pytest.raises(ValidationError, match="heartbeat_s"):
        FanoutParams(source="s3://b/p", lease_ttl_s=30, heartbeat_s=60)


def test_unit_params_carry_the_fanouts_pipeline_and_json_round_trips() -> None:
    fanout = FanoutParams(source="s3://b/p", classes=("cat",), strategy="text", unit_size=8, gpu_limit="gpu")
    unit = UnitParams.model_validate({**fanout.model_dump(mode="json"), "unit_id": 3})
    assert unit.pipeline() == PrelabelParams(source="s3://b/p", classes=("cat",), strategy="text")
    assert unit.prompts == fanout.prompts, "a unit must key its work by the fan-out's job"
    assert UnitParams.model_validate_json(unit.model_dump_json()) == unit


def test_with_model_fills_only_an_empty_model_id() -> None:
    assert PrelabelParams(source="s3://b/p").with_model("m").model_id == "m"
    assert PrelabelParams(source="s3://b/p", model_id="x").with_model("m").model_id == "x"
