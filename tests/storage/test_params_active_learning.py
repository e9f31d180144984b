"""An active-learning round's parameters: bad values are refused naming them, the record is JSON, the CLI's
choices are the registries'."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from storage.params import FREEZABLE, ActiveLearningParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "entropy"}, "strategy must be one of"),
        ({"budget": -1}, "budget must be >= 0"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
        ({"held_out_fraction": -0.1}, "held_out_fraction"),
        ({"accept_iou": 0.0}, "accept_iou"),
        ({"steps": 0}, "must be >= 1"),
        ({"score_batch": 0}, "must be >= 1"),
        ({"finetune_from": "scratch"}, "finetune_from"),
        ({"aggregate": "max"}, "aggregate must be min, mean or p25"),
        ({"freeze": ["image_encoder", "neck"]}, "freeze entries must be in"),
        ({"confidence_weights": {"entropy": 1.0}}, "unknown signals"),
        ({"confidence_weights": {"stability": "high"}}, "confidence_weights"),
        ({"budjet": 5}, "budjet"),  # a typo is an error, not a silently ignored field
    ],
)
def test_params_reject_bad_values_naming_them(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ActiveLearningParams.model_validate({"project": "p", **kwargs})


def test_params_record_as_json_with_their_weights_and_the_default_freeze() -> None:
    params = ActiveLearningParams(project="p", confidence_weights={"predicted_iou": 0.0})
    assert params.weights == {"predicted_iou": 0.0}
    data = params.model_dump(mode="json")
    assert data["confidence_weights"] == {"predicted_iou": 0.0}
    assert data["freeze"] == ["image_encoder", "prompt_encoder"]
    assert ActiveLearningParams.model_validate(data) == params
    assert ActiveLearningParams(project="p").weights is None


def test_an_empty_model_id_takes_the_configured_one_and_an_explicit_one_stays() -> None:
    assert ActiveLearningParams(project="p").with_model("m").model_id == "m"
    assert ActiveLearningParams(project="p", model_id="x").with_model("m").model_id == "x"


def test_freeze_choices_are_the_fine_tuning_engines() -> None:
    from model.finetune.config import FREEZABLE as ENGINE_FREEZABLE

    assert FREEZABLE == ENGINE_FREEZABLE
    assert ActiveLearningParams.choices()["freeze"] == FREEZABLE
