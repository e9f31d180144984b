"""Pure parts of the pre-label stages: batch sizes and the task score."""

from __future__ import annotations

import math

import pytest

from storage.prelabel.plan import tapered_sizes
from storage.prelabel.predict import task_score


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([], 0.0), ([0.9], 0.9), ([0.9, 0.4, 0.7], 0.4), ([math.nan, 0.8], 0.8), ([math.nan], 0.0)],
)
def test_task_score_is_the_weakest_instance_and_zero_when_empty(scores: list[float], expected: float) -> None:
    assert task_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "batch_size", "expected"),
    [
        (0, 64, []),
        (5, 64, [5]),
        (8, 64, [8]),
        (20, 64, [8, 8, 4]),
        (64, 64, [8, 8, 16, 32]),
        (100, 64, [8, 8, 16, 32, 36]),
        (128, 64, [8, 8, 16, 32, 32, 16, 8, 8]),
        (256, 64, [8, 8, 16, 32, 64, 64, 32, 16, 8, 8]),
        (300, 64, [8, 8, 16, 32, 64, 64, 44, 32, 16, 8, 8]),
        (10, 4, [4, 4, 2]),
        (33, 32, [4, 4, 8, 16, 1]),
        (7, 1, [1] * 7),
    ],
)
def test_batches_taper_at_both_ends_and_cover_every_image_once(n: int, batch_size: int, expected: list[int]) -> None:
    sizes = tapered_sizes(n, batch_size)
    assert sizes == expected
    assert sum(sizes) == n and all(0 < s <= batch_size for s in sizes)


def test_tapered_sizes_rejects_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="batch_size >= 1"):
        tapered_sizes(10, 0)


def test_store_writes_one_prediction_per_asset_and_the_decoded_size_over_the_listed_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    import numpy as np
    from sqlalchemy import select

    from model.instances import Instances
    from storage.catalog import Asset, Catalog, Prediction
    from storage.catalog.models import Run
    from storage.prelabel.predict import Predicted, store

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    with catalog.session() as session:
        run = Run(flow_name="prelabel")
        listed = [(None, None), (100, 50), (6, 8)]  # unknown, wrong (e.g. EXIF-rotated), already right
        assets = [
            Asset(bucket="b", key=f"k{i}", etag="e", size=1, media_type="image", height=h, width=w)
            for i, (h, w) in enumerate(listed)
        ]
        session.add_all([run, *assets])
        session.flush()
        run_id, ids = run.id, [a.id for a in assets]
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:, :] = True
    instances = Instances(masks=masks, labels=["cat", "dog"], scores=np.array([0.9, 0.4]))
    predicted = Predicted(ok=ids, images=[(i, (6, 8), instances) for i in ids])

    report = store(SimpleNamespace(catalog=catalog), run_id, "v1", predicted)  # type: ignore[arg-type]

    assert report.ok == ids
    with catalog.session() as session:
        sizes = {a.id: (a.height, a.width) for a in session.scalars(select(Asset))}
        rows = session.scalars(select(Prediction).order_by(Prediction.asset_id)).all()
    assert sizes == dict.fromkeys(ids, (6, 8))
    assert [(r.asset_id, r.num_instances, round(r.score, 6)) for r in rows] == [(i, 2, 0.4) for i in ids]
    stored = Instances.from_records(rows[0].instances, 6, 8)
    np.testing.assert_array_equal(stored.masks, masks)
