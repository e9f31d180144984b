"""Diversity (pooled embeddings, k-center greedy) and the four selection strategies, on hand-made pools."""

from __future__ import annotations

import numpy as np
import pytest

from model.diversity import assign_clusters, k_center_greedy, pool_features
from model.selection import STRATEGIES, select

# three tight clusters on a line: around 0, 10 and 20 (4, 3 and 3 points)
CLUSTERED = np.array([[0.0], [0.1], [0.2], [0.3], [10.0], [10.1], [10.2], [20.0], [20.1], [20.2]])
CLUSTER_OF = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_pool_features_are_unit_mean_and_max_over_positions() -> None:
    feats = np.zeros((2, 2, 2, 2), np.float32)
    feats[0, 0] = [[1, 3], [1, 3]]  # mean 2, max 3
    feats[1] = 0.0  # all-zero map stays zero (no division by zero)
    out = pool_features(feats)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], np.array([2, 0, 3, 0]) / np.sqrt(13), atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        pool_features(np.zeros((2, 3)))


def test_k_center_greedy_covers_every_cluster_before_repeating_one() -> None:
    picks = k_center_greedy(CLUSTERED, 3, seed=0)
    assert sorted(CLUSTER_OF[picks].tolist()) == [0, 1, 2]
    assert len(set(k_center_greedy(CLUSTERED, 10, seed=0))) == 10  # every point once, then stops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_greedy_starts_from_already_labelled_points(seed: int) -> None:
    # clusters 0 and 1 are labelled: the first new pick must be cluster 2, the farthest from them
    picks = k_center_greedy(CLUSTERED, 1, already=[0, 4], seed=seed)
    assert CLUSTER_OF[picks[0]] == 2


@pytest.mark.parametrize(
    ("n", "k", "already", "expected_len"),
    [
        pytest.param(0, 3, [], 0, id="empty-pool"),
        pytest.param(5, 0, [], 0, id="zero-budget"),
        pytest.param(3, 5, [], 3, id="budget-larger-than-pool"),
        pytest.param(3, 5, [0, 1], 1, id="only-unlabelled-points-left"),
    ],
)
def test_k_center_greedy_degenerate_pools(n: int, k: int, already: list[int], expected_len: int) -> None:
    emb = np.arange(n, dtype=np.float64)[:, None] if n else np.zeros((0, 1))
    assert len(k_center_greedy(emb, k, already=already)) == expected_len


def test_k_center_greedy_with_identical_points_still_picks_distinct_indices() -> None:
    assert sorted(k_center_greedy(np.zeros((4, 3)), 4)) == [0, 1, 2, 3]


def test_assign_clusters_nearest_center() -> None:
    np.testing.assert_array_equal(assign_clusters(CLUSTERED, [0, 4, 7]), CLUSTER_OF)
    with pytest.raises(ValueError, match="at least one center"):
        assign_clusters(CLUSTERED, [])


CONF = np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.2, 0.95, 0.5, 0.4, 0.3])


def test_uncertainty_orders_by_confidence_and_scores_are_the_confidence() -> None:
    sel = select("uncertainty", 3, confidence=CONF)
    assert sel.chosen == [2, 5, 9]
    assert sel.order == np.argsort(CONF).tolist()
    np.testing.assert_allclose(sel.task_scores, CONF.astype(np.float32))


def test_hybrid_takes_the_least_confident_item_of_each_diversity_cluster() -> None:
    sel = select("hybrid", 3, confidence=CONF, embeddings=CLUSTERED, seed=0)
    # least confident per cluster: cluster 0 -> item 2 (0.1), cluster 1 -> item 5 (0.2), cluster 2 -> item 9 (0.3)
    assert sorted(sel.chosen) == [2, 5, 9]
    assert sel.clusters is not None and len(set(sel.clusters[sel.chosen].tolist())) == 3
    # the chosen come first in Label Studio's order (lowest task scores)
    assert set(np.argsort(sel.task_scores)[:3].tolist()) == {2, 5, 9}


def test_hybrid_spreads_the_budget_where_uncertainty_alone_would_not() -> None:
    conf = np.array([0.1, 0.11, 0.12, 0.13, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8])  # cluster 0 is the least confident
    assert set(CLUSTER_OF[select("uncertainty", 3, confidence=conf).chosen]) == {0}
    assert set(CLUSTER_OF[select("hybrid", 3, confidence=conf, embeddings=CLUSTERED).chosen]) == {0, 1, 2}


def test_diversity_covers_clusters_and_ignores_confidence() -> None:
    sel = select("diversity", 3, embeddings=CLUSTERED, seed=3)
    assert sorted(CLUSTER_OF[sel.chosen].tolist()) == [0, 1, 2]
    assert sorted(sel.order) == list(range(10))


def test_diversity_reaches_for_regions_not_labelled_yet() -> None:
    labelled = np.array([[0.05], [10.05]])  # clusters 0 and 1 were labelled in an earlier round
    sel = select("diversity", 1, embeddings=CLUSTERED, labelled_embeddings=labelled)
    assert CLUSTER_OF[sel.chosen[0]] == 2


def test_random_is_seeded_and_rank_scores_put_the_chosen_first() -> None:
    a, b, c = (select("random", 4, confidence=CONF, seed=s) for s in (7, 7, 8))
    assert a.chosen == b.chosen and a.order != c.order
    assert set(np.argsort(a.task_scores)[:4].tolist()) == set(a.chosen)
    assert np.all((a.task_scores > 0) & (a.task_scores < 1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_orders_the_whole_pool_once(strategy: str) -> None:
    sel = select(strategy, 4, confidence=CONF, embeddings=CLUSTERED, seed=1)
    assert sorted(sel.order) == list(range(10))
    assert sel.chosen == sel.order[:4]
    assert sel.rank_of()[sel.order[0]] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_handles_an_empty_pool(strategy: str) -> None:
    sel = select(strategy, 4, confidence=np.zeros(0), embeddings=np.zeros((0, 2)))
    assert sel.order == [] and sel.chosen == [] and sel.task_scores.shape == (0,)


def test_ties_are_broken_by_the_seed_not_by_position() -> None:
    flat = np.full(20, 0.5)
    firsts = {select("uncertainty", 1, confidence=flat, seed=s).chosen[0] for s in range(10)}
    assert len(firsts) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"strategy": "entropy", "budget": 1, "confidence": CONF}, "must be one of", id="unknown"),
        pytest.param({"strategy": "uncertainty", "budget": -1, "confidence": CONF}, ">= 0", id="negative-budget"),
        pytest.param({"strategy": "uncertainty", "budget": 1}, "needs confidence", id="no-confidence"),
        pytest.param({"strategy": "hybrid", "budget": 1, "confidence": CONF}, "needs embeddings", id="no-embeddings"),
        pytest.param(
            {"strategy": "hybrid", "budget": 1, "confidence": CONF, "embeddings": CLUSTERED[:3]},
            "same pool",
            id="size-mismatch",
        ),
        pytest.param({"strategy": "uncertainty", "budget": 1, "confidence": [0.1, np.nan]}, "finite", id="nan"),
        pytest.param({"strategy": "random", "budget": 1}, "pool size", id="random-without-pool"),
    ],
)
def test_select_rejects_bad_requests_naming_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(**kwargs)
