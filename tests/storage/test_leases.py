"""Work-unit leases on SQLite and PostgreSQL: sharding, exclusive claims under concurrency, expiry takeover, renewal."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from storage import leases
from storage.catalog import Catalog, WorkUnit
from storage.catalog.assets import discover
from storage.s3 import S3Object

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _assets(catalog: Catalog, images: int, videos: int = 0) -> list[int]:
    objects = [S3Object("b", f"in/i{i:04d}.jpg", "e", 1, None, "image") for i in range(images)]
    objects += [S3Object("b", f"in/v{i:04d}.mp4", "e", 1, None, "video") for i in range(videos)]
    return discover(catalog, objects).new_asset_ids


# -- pure parts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "kinds", "size", "expected"),
    [
        ([], [], 4, []),
        ([1, 2, 3], ["image"] * 3, 4, [[1, 2, 3]]),
        ([1, 2, 3, 4, 5], ["image"] * 5, 2, [[1, 2], [3, 4], [5]]),
        ([1, 2, 3], ["video", "image", "video"], 8, [[2], [1], [3]]),
        ([7], ["image"], 1, [[7]]),
    ],
)
def test_shard_chunks_images_and_gives_each_video_its_own_unit(
    ids: list[int], kinds: list[str], size: int, expected: list[list[int]]
) -> None:
    assert leases.shard(ids, kinds, size) == expected


@pytest.mark.parametrize(
    ("ids", "kinds", "size", "message"),
    [([1], ["image"], 0, "unit_size must be >= 1"), ([1, 2], ["image"], 2, "differ in length")],
)
def test_shard_rejects_bad_arguments(ids: list[int], kinds: list[str], size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        leases.shard(ids, kinds, size)


@pytest.mark.parametrize(
    ("status", "owner", "expires_at", "free"),
    [
        ("pending", None, None, True),
        ("pending", "w1", T0 + timedelta(seconds=1), False),
        ("pending", "w1", T0, True),  # expiring exactly now is expired
        ("pending", "w1", T0 - timedelta(seconds=1), True),
        ("pending", "w1", (T0 - timedelta(seconds=1)).replace(tzinfo=None), True),  # SQLite hands back naive UTC
        ("done", None, None, False),
        ("failed", "w1", T0 - timedelta(hours=1), False),
    ],
)
def test_lease_is_free_only_when_pending_and_unheld_or_expired(
    status: str, owner: str | None, expires_at: datetime | None, free: bool
) -> None:
    assert leases.lease_is_free(status, owner, expires_at, T0) is free


@pytest.mark.parametrize(("ttl", "beat"), [(0, 1), (-1, 1), (10, 0), (10, 10), (10, 11)])
def test_lease_config_rejects_ttl_and_heartbeat_that_cannot_keep_a_lease(ttl: float, beat: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        leases.LeaseConfig(ttl_s=ttl, heartbeat_s=beat)


# -- catalog --------------------------------------------------------------------------------------------------------
def test_sharding_puts_each_asset_in_exactly_one_unit_even_when_repeated(catalog: Catalog) -> None:
    ids = _assets(catalog, 5, videos=1)
    units = leases.shard_pending(catalog, "s3://b/in/", ids, unit_size=2)
    assert len(units) == 4  # [2, 2, 1] images + 1 video
    assert leases.shard_pending(catalog, "s3://b/in/", ids, unit_size=2) == []
    claimed: list[int] = []
    while (lease := leases.claim(catalog, "w", 60, now=T0)) is not None:
        claimed.extend(lease.asset_ids)
    assert sorted(claimed) == sorted(ids)


def test_concurrent_claimers_never_get_the_same_asset(catalog: Catalog) -> None:
    ids = _assets(catalog, 40)
    leases.shard_pending(catalog, "s3://b/in/", ids, unit_size=2)
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        mine: list[int] = []
        try:
            barrier.wait()
            while (lease := leases.claim(catalog, name, 60)) is not None:
                mine.extend(lease.asset_ids)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    every = [a for mine in got.values() for a in mine]
    duplicates = [a for a, n in Counter(every).items() if n > 1]
    assert duplicates == [], f"assets claimed twice: {duplicates}"
    assert sorted(every) == sorted(ids)
    assert sum(1 for mine in got.values() if mine) >= 2, "the claims were not actually concurrent"


def test_live_lease_blocks_others_and_expired_lease_is_taken_over(catalog: Catalog) -> None:
    (unit,) = leases.shard_pending(catalog, "s3://b/in/", _assets(catalog, 3), unit_size=8)
    first = leases.claim(catalog, "dead-worker", 30, now=T0)
    assert first is not None and first.unit_id == unit and first.attempt == 1
    assert leases.claim(catalog, "other", 30, now=T0 + timedelta(seconds=29)) is None
    assert leases.claim(catalog, "other", 30, unit_id=unit, now=T0 + timedelta(seconds=29)) is None
    taken = leases.claim(catalog, "other", 30, unit_id=unit, now=T0 + timedelta(seconds=31))
    assert taken is not None and taken.owner == "other" and taken.attempt == 2 and taken.asset_ids == first.asset_ids
    # the dead worker comes back: it can neither renew nor finish the unit it lost
    assert leases.renew(catalog, first, 30, now=T0 + timedelta(seconds=32)) is None
    assert leases.finish(catalog, first) is False
    assert leases.finish(catalog, taken) is True
    with catalog.session() as session:
        row = session.get(WorkUnit, unit)
        assert row is not None and (row.status, row.lease_owner) == ("done", "other")


def test_renewal_keeps_the_lease_past_its_first_expiry(catalog: Catalog) -> None:
    (unit,) = leases.shard_pending(catalog, "s3://b/in/", _assets(catalog, 2), unit_size=8)
    lease = leases.claim(catalog, "w1", 30, now=T0)
    assert lease is not None
    renewed = leases.renew(catalog, lease, 30, now=T0 + timedelta(seconds=20))
    assert renewed is not None and renewed.expires_at == T0 + timedelta(seconds=50)
    assert leases.claim(catalog, "w2", 30, unit_id=unit, now=T0 + timedelta(seconds=40)) is None
    assert leases.claim(catalog, "w2", 30, unit_id=unit, now=T0 + timedelta(seconds=51)) is not None


def test_finished_and_released_units_are_never_or_immediately_claimable(catalog: Catalog) -> None:
    a, b = leases.shard_pending(catalog, "s3://b/in/", _assets(catalog, 2), unit_size=1)
    la, lb = leases.claim(catalog, "w1", 300, unit_id=a), leases.claim(catalog, "w1", 300, unit_id=b)
    assert la is not None and lb is not None
    assert leases.finish(catalog, la, "failed") and leases.release(catalog, lb)
    assert leases.claim(catalog, "w2", 300, unit_id=a) is None
    again = leases.claim(catalog, "w2", 300)
    assert again is not None and again.unit_id == b
    with pytest.raises(ValueError, match="status must be"):
        leases.finish(catalog, again, "bogus")


def test_claim_filters_by_source(catalog: Catalog) -> None:
    ids = _assets(catalog, 2)
    leases.shard_pending(catalog, "s3://b/one/", ids[:1], unit_size=1)
    leases.shard_pending(catalog, "s3://b/two/", ids[1:], unit_size=1)
    lease = leases.claim(catalog, "w", 60, source="s3://b/two/")
    assert lease is not None and lease.asset_ids == (ids[1],)
    assert leases.claim(catalog, "w", 60, source="s3://b/two/") is None


def test_free_units_of_a_prefix_include_units_of_objects_under_it_and_nothing_beside_it(catalog: Catalog) -> None:
    ids = _assets(catalog, 4)
    (prefix_unit,) = leases.shard_pending(catalog, "s3://b/in/", ids[:1], unit_size=1)
    (object_unit,) = leases.shard_pending(catalog, "s3://b/in/x_%.png", ids[1:2], unit_size=1)  # LIKE wildcards
    (other_unit,) = leases.shard_pending(catalog, "s3://b/other/", ids[2:3], unit_size=1)
    (lookalike,) = leases.shard_pending(catalog, "s3://b/in/xy%.png", ids[3:], unit_size=1)
    assert leases.free_unit_ids(catalog, "s3://b/in/") == [prefix_unit, object_unit, lookalike]
    assert leases.free_unit_ids(catalog, "s3://b/in/x_%.png") == [object_unit]
    held = leases.claim(catalog, "w", 60, unit_id=object_unit, now=T0)
    assert held is not None
    assert leases.free_unit_ids(catalog, "s3://b/in/", now=T0) == [prefix_unit, lookalike]
    assert leases.free_unit_ids(catalog, "s3://b/in/", now=T0 + timedelta(seconds=61)) == [
        prefix_unit,
        object_unit,
        lookalike,
    ]
    assert leases.free_unit_ids(catalog, "s3://b/", now=T0) == [prefix_unit, other_unit, lookalike]


def test_heartbeat_renews_while_working_and_reports_a_lost_lease(catalog: Catalog) -> None:
    (unit,) = leases.shard_pending(catalog, "s3://b/in/", _assets(catalog, 1), unit_size=1)
    lease = leases.claim(catalog, "w1", 0.6)
    assert lease is not None
    config = leases.LeaseConfig(ttl_s=0.6, heartbeat_s=0.1)
    with leases.Heartbeat(catalog, lease, config) as beat:
        threading.Event().wait(1.5)  # well past the first expiry
        assert leases.claim(catalog, "w2", 0.6, unit_id=unit) is None
        assert beat.renewals >= 3 and not beat.lost.is_set()
    with catalog.session() as session:
        session.execute(WorkUnit.__table__.update().values(lease_owner="thief"))
    with leases.Heartbeat(catalog, beat.lease, config) as lost:
        assert lost.lost.wait(5)
    with catalog.session() as session:
        assert session.scalar(select(WorkUnit.lease_owner)) == "thief"
