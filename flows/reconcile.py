"""Flow runs whose process is gone are marked CRASHED, so the Prefect UI tells the truth.

A flow run killed with its process (SIGKILL, a lost machine, a worker killed with its children) stays RUNNING on the
Prefect server: nothing is left to report its end. :func:`at_run_start` is called first thing by the pre-label flow
and the fan-out dispatcher; it labels the current run with the process that runs it (``maskloop.process =
host:pid:start``) and marks CRASHED every other RUNNING run of maskloop's flows whose process is known to be gone:

- a run labelled with a process of this host whose pid is gone (or now another process: its start time differs);
- a ``prelabel-unit`` run whose work-unit lease (``lease_owner`` names the flow run) expired unrenewed, or passed
  to another holder, or whose lease names a process of this host that is gone.

The catalog's run rows of those flow runs become ``crashed`` too. Runs on other hosts are judged only by their leases; a run without either kind of evidence is left alone. Nothing
here ever fails the calling flow: a reconcile that cannot reach Prefect or the catalog logs one warning.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from sqlalchemy import select, update

from storage.catalog import Catalog, Run, WorkUnit
from storage.catalog.models import utcnow

log = logging.getLogger(__name__)

FLOW_NAMES = ("prelabel", "prelabel-unit", "prelabel-fanout", "discover", "harvest", "active-learning")
PROCESS_LABEL = "maskloop.process"


@dataclass(frozen=True)
class Verdict:
    """A RUNNING flow run found dead, and why."""

    flow_run_id: UUID
    reason: str


def process_token(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (start: its start time in clock ticks since boot, '' where unknown)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the ")" of the command name


def process_gone(token: str) -> bool | None:
    """True when the process ``host:pid:start`` no longer runs, False when it does, None when this host cannot tell
    (another host, or a malformed token)."""
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _start_ticks(pid)
    return bool(start and now and now != start)  # the pid was reused by a later process


def _lease_verdict(run_id: UUID, units: list[WorkUnit], now: datetime) -> str | None:
    owner_prefix = f"flow-run/{run_id} "
    for unit in units:
        owner = unit.lease_owner or ""
        if not owner.startswith(owner_prefix):
            continue
        host_pid = owner.rsplit("pid/", 1)[1] if "pid/" in owner else ""
        if host_pid and process_gone(f"{host_pid}:") is True:
            return f"its process {host_pid} holding work unit {unit.id} is gone"
        expires = unit.lease_expires_at
        if unit.status == "pending" and expires is not None:
            expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            if expires <= now:
                return f"its lease on work unit {unit.id} expired at {expires:%Y-%m-%d %H:%M:%S} UTC unrenewed"
    return None


def dead_runs(runs: list[object], units: list[WorkUnit], current: UUID | None, now: datetime) -> list[Verdict]:
    """Of RUNNING flow runs (Prefect ``FlowRun`` objects), those known dead: by their process label, else their lease."""
    found: list[Verdict] = []
    for run in runs:
        run_id: UUID = run.id  # type: ignore[attr-defined]
        if run_id == current:
            continue
        token = str((getattr(run, "labels", None) or {}).get(PROCESS_LABEL, ""))
        if token and process_gone(token) is True:
            found.append(Verdict(run_id, f"its process {token.rsplit(':', 1)[0]} is gone"))
            continue
        reason = _lease_verdict(run_id, units, now)
        if reason is not None:
            found.append(Verdict(run_id, reason))
    return found


def reconcile(catalog: Catalog | None, current: UUID | None = None) -> list[Verdict]:
    """Mark CRASHED the RUNNING runs of maskloop's flows whose process is gone; returns them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOW_NAMES))), flow_run_filter=running, limit=200
        )
        runs = [r for r in runs if r.id != current]
        if not runs:
            return []
        units: list[WorkUnit] = []
        if catalog is not None:
            prefixes = [f"flow-run/{r.id} %" for r in runs]
            with catalog.session() as session:
                for prefix in prefixes:
                    units += session.scalars(select(WorkUnit).where(WorkUnit.lease_owner.like(prefix))).all()
        verdicts = dead_runs(list(runs), units, current, datetime.now(UTC))
        for verdict in verdicts:
            message = f"maskloop: the flow run's process died ({verdict.reason}); marked crashed by a later run"
            client.set_flow_run_state(verdict.flow_run_id, Crashed(message=message), force=True)
            log.warning("flow run %s was left RUNNING: %s; marked CRASHED", verdict.flow_run_id, verdict.reason)
    if catalog is not None and verdicts:  # the catalog's run rows of those flow runs say so too (`maskloop runs`)
        ids = [str(v.flow_run_id) for v in verdicts]
        with catalog.session() as session:
            session.execute(
                update(Run)
                .where(Run.flow_run_id.in_(ids), Run.status == "running")
                .values(status="crashed", finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    return verdicts


def at_run_start(catalog: Catalog | None = None) -> list[Verdict]:
    """Label the current flow run with its process, then :func:`reconcile` the others. Never raises."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.context import get_run_context

        run = get_run_context().flow_run  # type: ignore[union-attr]
        current = run.id if run is not None else None
        if current is not None:
            with get_client(sync_client=True) as client:
                client.update_flow_run_labels(current, {PROCESS_LABEL: process_token()})
        return reconcile(catalog, current)
    except Exception as error:  # noqa: BLE001 - bookkeeping must never fail the run
        log.warning("could not reconcile crashed flow runs (%s: %s)", type(error).__name__, error)
        return []
