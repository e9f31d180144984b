"""The strategy table is the one list of auto-prompt strategies: auto_segment, params and the CLI read it."""

from __future__ import annotations

import numpy as np
import pytest

from model.autoprompt import auto_segment
from model.instances import Instances
from model.strategies import STRATEGIES, StrategyInputs, StrategySpec, strategy_spec


def test_every_strategy_names_its_params_and_needs() -> None:
    assert set(STRATEGIES) == {"everything", "text", "prior", "concept"}
    for name, spec in STRATEGIES.items():
        assert spec.name == name and spec.help and spec.params()
    assert STRATEGIES["text"].needs_detector and STRATEGIES["text"].needs_classes
    assert "points_per_side" in STRATEGIES["everything"].params()


@pytest.mark.parametrize(
    ("name", "inputs", "params", "message"),
    [
        ("text", StrategyInputs(None), {}, "needs classes"),
        ("text", StrategyInputs(None, ("cat",)), {}, "needs a text detector"),
        ("prior", StrategyInputs(None), {}, "needs priors"),
        ("everything", StrategyInputs(None), {"box_threshold": 0.3}, "does not take \\['box_threshold'\\]"),
    ],
)
def test_a_strategy_says_what_it_is_missing(
    name: str, inputs: StrategyInputs, params: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        strategy_spec(name).check(inputs, params)


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="everything, text, prior, concept"):
        auto_segment(None, [np.zeros((4, 4, 3), np.uint8)], "magic")  # type: ignore[arg-type]


def test_a_strategy_added_to_the_table_is_dispatched_by_auto_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(inputs: StrategyInputs, images: list[np.ndarray], params: dict[str, int]) -> list[Instances]:
        return [Instances.empty(*img.shape[:2]) for img in images]

    monkeypatch.setitem(STRATEGIES, "blank", StrategySpec("blank", "nothing", run, lambda: frozenset({"k"})))
    (out,) = auto_segment(None, [np.zeros((5, 7, 3), np.uint8)], "blank", k=1)  # type: ignore[arg-type]
    assert out.image_size == (5, 7) and len(out) == 0
