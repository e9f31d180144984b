"""Which unlabelled items people should correct next: the ``uncertainty``, ``diversity``, ``hybrid`` and ``random``
strategies (seeded, pure numpy).

Every strategy returns a :class:`Selection`: the whole pool in review order (``order``), the first ``budget`` of
it (``chosen``), a task score per item for Label Studio's uncertainty sampling (low = served first) and, for the
embedding-based strategies, a cluster id per item (Label Studio's uncertainty sampling also serves the least-solved
cluster first).

- ``uncertainty``: lowest confidence first; the task score is the confidence itself.
- ``diversity``: k-center greedy over image embeddings (coverage of the pool, ignoring the model's confidence).
- ``hybrid``: ``budget`` diversity clusters (k-center centers, nearest-center assignment), then the least confident
  item of each cluster; the rest follow by confidence.
- ``random``: a seeded permutation (the baseline every other strategy has to beat).

For the rank-based strategies the task score is ``(rank + 0.5) / N``, so Label Studio serves the chosen items first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.diversity import assign_clusters, k_center_greedy

SelectionStrategy = Literal["uncertainty", "diversity", "hybrid", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "diversity", "hybrid", "random")


@dataclass(frozen=True)
class Selection:
    """``order``: pool positions in review order; ``chosen``: the first ``budget``; ``task_scores`` (N,) by pool
    position; ``clusters`` (N,) by pool position or None."""

    strategy: str
    order: list[int]
    chosen: list[int]
    task_scores: np.ndarray
    clusters: np.ndarray | None = None

    def rank_of(self) -> np.ndarray:
        """(N,) review rank of each pool position (0 = first)."""
        ranks = np.empty(len(self.order), np.int64)
        ranks[np.asarray(self.order, np.int64)] = np.arange(len(self.order))
        return ranks


def _rank_scores(order: Sequence[int], n: int) -> np.ndarray:
    scores = np.empty(n, np.float32)
    scores[np.asarray(order, np.int64)] = (np.arange(n, dtype=np.float32) + 0.5) / max(n, 1)
    return scores


def _by_confidence(confidence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions by ascending confidence, ties broken by a seeded shuffle."""
    tie = rng.permutation(confidence.shape[0])
    return np.lexsort((tie, confidence))


def select(
    strategy: str,
    budget: int,
    *,
    confidence: np.ndarray | Sequence[float] | None = None,
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> Selection:
    """Order the pool for review and choose ``budget`` items with ``strategy``.

    ``confidence`` (N,) is needed by ``uncertainty`` and ``hybrid``; ``embeddings`` (N, D) by ``diversity`` and
    ``hybrid``. ``labelled_embeddings`` (M, D), items labelled in earlier rounds, seed the coverage of
    ``diversity`` so it reaches for regions not labelled yet.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"selection strategy must be one of {STRATEGIES}, got {strategy!r}")
    if budget < 0:
        raise ValueError(f"selection budget must be >= 0, got {budget}")
    conf = None if confidence is None else np.asarray(confidence, np.float64).reshape(-1)
    emb = None if embeddings is None else np.asarray(embeddings, np.float64)
    sizes = {name: v.shape[0] for name, v in (("confidence", conf), ("embeddings", emb)) if v is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"confidence and embeddings must describe the same pool, got sizes {sizes}")
    if strategy in ("uncertainty", "hybrid") and conf is None:
        raise ValueError(f"selection strategy {strategy!r} needs confidence= (one value per pool item)")
    if strategy in ("diversity", "hybrid") and emb is None:
        raise ValueError(f"selection strategy {strategy!r} needs embeddings= (one row per pool item)")
    if conf is not None and not np.all(np.isfinite(conf)):
        raise ValueError("selection confidence must be finite (score unknown items 0, not NaN)")
    n = next(iter(sizes.values())) if sizes else 0
    if strategy == "random" and not sizes:
        raise ValueError("selection strategy 'random' needs confidence= or embeddings= to know the pool size")
    rng = np.random.default_rng([seed, 0x5E1])
    budget = min(budget, n)
    clusters = None
    if strategy == "random":
        order = rng.permutation(n).tolist()
        scores = _rank_scores(order, n)
    elif strategy == "uncertainty":
        assert conf is not None
        order = _by_confidence(conf, rng).tolist()
        scores = conf.astype(np.float32)
    elif strategy == "diversity":
        assert emb is not None
        pool_and_seen = emb if labelled_embeddings is None else np.concatenate([emb, labelled_embeddings])
        seen = list(range(n, pool_and_seen.shape[0]))
        centers = k_center_greedy(pool_and_seen, n, already=seen, seed=seed)
        order = [c for c in centers if c < n]
        scores = _rank_scores(order, n)
        head = order[: max(budget, 1)] if n else []
        clusters = assign_clusters(emb, head) if head else None
    else:  # hybrid
        assert conf is not None and emb is not None
        centers = k_center_greedy(emb, max(budget, 1), seed=seed) if n else []
        clusters = assign_clusters(emb, centers) if centers else np.zeros(0, np.int64)
        by_conf = _by_confidence(conf, rng).tolist()
        first: list[int] = []
        seen_clusters: set[int] = set()
        for pos in by_conf:  # least confident item of each cluster, clusters in order of their weakest item
            if int(clusters[pos]) not in seen_clusters:
                seen_clusters.add(int(clusters[pos]))
                first.append(pos)
        taken = set(first)
        order = first + [p for p in by_conf if p not in taken]
        scores = _rank_scores(order, n)
    return Selection(strategy, order, order[:budget], scores, clusters)
