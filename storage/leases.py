"""Work-unit leases in the catalog: shard pending assets into units, claim a unit with a lease, renew it while
working (heartbeat), finish it. Two workers never hold the same unit (and within a pre-label job an asset is in
exactly one unit); a dead worker's lease expires and another worker takes the unit over.

Claiming is row-level ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (claimers skip rows another transaction
holds instead of queueing behind it) and an atomic conditional ``UPDATE … WHERE <lease free>`` checked by rowcount on
SQLite (whose writers are serialised by the database lock). Lease times are the caller's clock (UTC); workers that
share a catalog need roughly synchronised clocks (NTP), and ``ttl`` should be much larger than the expected skew.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.catalog.db import Catalog
from storage.catalog.models import Asset, WorkUnit, WorkUnitAsset, utcnow

log = logging.getLogger(__name__)


# -- pure parts -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseConfig:
    """How long a lease lasts and how often a working holder renews it (several renewals per ``ttl_s``)."""

    ttl_s: float = 300.0
    heartbeat_s: float = 60.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {self.ttl_s}")
        if not 0 < self.heartbeat_s < self.ttl_s:
            raise ValueError(f"heartbeat_s must be in (0, ttl_s={self.ttl_s}), got {self.heartbeat_s}")


def lease_is_free(status: str, owner: str | None, expires_at: datetime | None, now: datetime) -> bool:
    """A unit can be claimed when it is pending and nobody holds it, or its holder's lease has expired."""
    if status != "pending":
        return False
    return owner is None or expires_at is None or _aware(expires_at) <= now


def shard(asset_ids: Sequence[int], media_types: Sequence[str], unit_size: int) -> list[list[int]]:
    """Asset ids in units of at most ``unit_size`` images; a video counts as ``unit_size`` (a unit of its own)."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    if len(asset_ids) != len(media_types):
        raise ValueError(f"asset_ids and media_types differ in length: {len(asset_ids)} vs {len(media_types)}")
    images = [a for a, kind in zip(asset_ids, media_types, strict=True) if kind != "video"]
    videos = [a for a, kind in zip(asset_ids, media_types, strict=True) if kind == "video"]
    return [images[i : i + unit_size] for i in range(0, len(images), unit_size)] + [[v] for v in videos]


def _aware(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they are stored as UTC)."""
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _free(now: datetime) -> ColumnElement[bool]:
    return and_(
        WorkUnit.status == "pending",
        or_(WorkUnit.lease_owner.is_(None), WorkUnit.lease_expires_at.is_(None), WorkUnit.lease_expires_at <= now),
    )


# -- catalog operations ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """A held lease on one unit: who holds it, until when, and the unit's assets."""

    unit_id: int
    owner: str
    expires_at: datetime
    asset_ids: tuple[int, ...]
    attempt: int
    job_id: int = 0


def shard_pending(
    catalog: Catalog, source: str, asset_ids: Sequence[int], unit_size: int, *, job_id: int = 0
) -> list[int]:
    """Put those of ``asset_ids`` that are in no unit of pre-label job ``job_id`` yet into new pending units of that
    job; returns the new unit ids.

    Concurrent sharders are safe: within a job an asset is in at most one unit (unique constraint); a sharder that
    loses the race rolls back and retries with what is left.
    """
    for _attempt in range(5):
        try:
            return catalog.transaction(
                lambda session: _shard_once(session, source, asset_ids, unit_size, job_id), f"shard {source}"
            )
        except IntegrityError:
            log.info("another worker sharded some of these assets at the same time; retrying")
    raise RuntimeError(f"could not shard {len(asset_ids)} assets of {source} after 5 attempts (constant contention)")


def _shard_once(session: Session, source: str, asset_ids: Sequence[int], unit_size: int, job_id: int) -> list[int]:
    taken = set(
        session.scalars(
            select(WorkUnitAsset.asset_id).where(WorkUnitAsset.job_id == job_id, WorkUnitAsset.asset_id.in_(asset_ids))
        )
    )
    kinds = dict(session.execute(select(Asset.id, Asset.media_type).where(Asset.id.in_(asset_ids))).tuples().all())
    free = [a for a in asset_ids if a not in taken and a in kinds]
    unit_ids: list[int] = []
    for members in shard(free, [kinds[a] for a in free], unit_size):
        unit = WorkUnit(source=source, job_id=job_id, status="pending", attempts=0)
        session.add(unit)
        session.flush()
        session.add_all(WorkUnitAsset(unit_id=unit.id, job_id=job_id, asset_id=a) for a in members)
        unit_ids.append(unit.id)
    session.flush()
    return unit_ids


def free_unit_ids(catalog: Catalog, source: str, now: datetime | None = None, *, job_id: int = 0) -> list[int]:
    """Pending units of job ``job_id`` at or under ``source`` that nobody holds right now (new ones, released ones,
    dead workers' ones).

    "Under": a unit whose source starts with ``source``, e.g. the one-object unit ``s3://b/in/x.png`` of an
    on-upload run is free for the fan-out of ``s3://b/in/`` to re-dispatch once its holder's lease expired.
    """
    stmt = (
        select(WorkUnit.id)
        .where(_free(now or utcnow()), WorkUnit.job_id == job_id, WorkUnit.source.startswith(source, autoescape=True))
        .order_by(WorkUnit.id)
    )
    return catalog.transaction(lambda session: list(session.scalars(stmt)), f"list the free work units of {source}")


def claim(
    catalog: Catalog,
    owner: str,
    ttl_s: float,
    *,
    unit_id: int | None = None,
    source: str | None = None,
    now: datetime | None = None,
) -> Lease | None:
    """Claim ``unit_id`` (or the oldest free unit, of ``source`` if given) for ``owner`` until now + ``ttl_s``.

    Returns None when the unit is held by a live lease, finished, or (without ``unit_id``) when no unit is free.
    """
    if not owner:
        raise ValueError("lease owner must be a non-empty string")
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)

    def take(session: Session) -> tuple[int, int, int, tuple[int, ...]] | None:
        if catalog.dialect == "postgresql":
            got = _claim_skip_locked(session, owner, expires, now, unit_id, source)
        else:
            got = _claim_conditional(session, owner, expires, now, unit_id, source)
        if got is None:
            return None
        attempt, job_id = session.execute(select(WorkUnit.attempts, WorkUnit.job_id).where(WorkUnit.id == got)).one()
        assets = tuple(
            session.scalars(
                select(WorkUnitAsset.asset_id).where(WorkUnitAsset.unit_id == got).order_by(WorkUnitAsset.asset_id)
            )
        )
        return got, int(attempt or 0), int(job_id or 0), assets

    # one transaction, re-run whole when SQLite reports the database locked or the connection is lost
    taken = catalog.transaction(take, f"claim a work unit for {owner}")
    if taken is None:
        return None
    got, attempt, job_id, assets = taken
    log.info("%s claimed work unit %d (%d assets, attempt %d)", owner, got, len(assets), attempt)
    return Lease(got, owner, expires, assets, attempt, job_id)


def _candidates(now: datetime, unit_id: int | None, source: str | None):  # noqa: ANN202 - a Select
    stmt = select(WorkUnit.id).where(_free(now)).order_by(WorkUnit.id)
    if unit_id is not None:
        stmt = stmt.where(WorkUnit.id == unit_id)
    if source is not None:
        stmt = stmt.where(WorkUnit.source == source)
    return stmt


def _take(session: Session, unit: int, owner: str, expires: datetime, now: datetime) -> bool:
    result = session.execute(
        update(WorkUnit)
        .where(WorkUnit.id == unit, _free(now))
        .values(lease_owner=owner, lease_expires_at=expires, attempts=WorkUnit.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _claim_skip_locked(
    session: Session, owner: str, expires: datetime, now: datetime, unit_id: int | None, source: str | None
) -> int | None:
    unit = session.scalar(_candidates(now, unit_id, source).limit(1).with_for_update(skip_locked=True))
    if unit is None:
        return None
    return unit if _take(session, unit, owner, expires, now) else None


def _claim_conditional(
    session: Session, owner: str, expires: datetime, now: datetime, unit_id: int | None, source: str | None
) -> int | None:
    # Each candidate is taken by an UPDATE that re-checks the lease: a racing claimer that got there first makes
    # rowcount 0 and we try the next one.
    for unit in session.scalars(_candidates(now, unit_id, source).limit(32)).all():
        if _take(session, unit, owner, expires, now):
            return unit
    return None


def renew(catalog: Catalog, lease: Lease, ttl_s: float, now: datetime | None = None) -> Lease | None:
    """Extend a held lease to now + ``ttl_s``; None when the lease was lost (taken over, or the unit finished)."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)
    if not _update_held(catalog, lease, "renew", lease_expires_at=expires):
        return None
    return Lease(lease.unit_id, lease.owner, expires, lease.asset_ids, lease.attempt, lease.job_id)


def finish(catalog: Catalog, lease: Lease, status: str = "done") -> bool:
    """Mark the unit ``done`` or ``failed`` if ``lease`` still holds it; False when the lease was lost meanwhile."""
    if status not in ("done", "failed"):
        raise ValueError(f"status must be done or failed, got {status!r}")
    return _update_held(catalog, lease, "finish", status=status, lease_expires_at=None, finished_at=utcnow())


def release(catalog: Catalog, lease: Lease) -> bool:
    """Give a held unit back unfinished (another worker may claim it at once)."""
    return _update_held(catalog, lease, "release", lease_owner=None, lease_expires_at=None)


def _update_held(catalog: Catalog, lease: Lease, what: str, **values: object) -> bool:
    """Set ``values`` on the unit if ``lease`` still holds it (one transaction, re-run whole on a lost connection
    or a locked SQLite database); False when the lease was lost."""

    def work(session: Session) -> bool:
        result = session.execute(
            update(WorkUnit)
            .where(WorkUnit.id == lease.unit_id, WorkUnit.lease_owner == lease.owner, WorkUnit.status == "pending")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    return catalog.transaction(work, f"{what} the lease on work unit {lease.unit_id}")


class Heartbeat:
    """Renews a lease every ``config.heartbeat_s`` on a daemon thread while the block runs; ``lost`` is set when a
    renewal finds the lease gone (the worker should stop writing for that unit)."""

    def __init__(self, catalog: Catalog, lease: Lease, config: LeaseConfig) -> None:
        self.catalog, self.lease, self.config = catalog, lease, config
        self.lost = threading.Event()
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-heartbeat-{lease.unit_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                renewed = renew(self.catalog, self.lease, self.config.ttl_s)
            except Exception:  # noqa: BLE001 - a failed renewal is retried on the next beat; the lease may still hold
                log.exception("renewing the lease on work unit %d failed", self.lease.unit_id)
                continue
            if renewed is None:
                log.warning("lease on work unit %d was lost (taken over or finished)", self.lease.unit_id)
                self.lost.set()
                return
            self.lease = renewed
            self.renewals += 1

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
