"""The catalog misbehaving: a test-owned PostgreSQL cluster (``initdb``/``pg_ctl`` on a free port, never the machine's
shared server) restarted while ``maskloop prelabel`` runs, and a SQLite catalog written by two processes that claim
work units at the same time (``database is locked``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from storage import leases
from storage.catalog import Catalog, WorkUnit
from storage.catalog.assets import discover
from storage.labelstudio.client import LabelStudioClient
from storage.s3 import S3Object
from storage.settings import Settings
from tests.faults.conftest import Figures, Outcome, maskloop_env
from tests.faults.invariant import check_invariant
from tests.support.fault_proxy import Fault, fault_proxy
from tests.support.servers import free_port

PG_BIN = Path(shutil.which("pg_ctl") or "/usr/local/bin/pg_ctl").parent


@dataclass
class PgCluster:
    """A PostgreSQL cluster owned by the test: its data dir, port and how to restart it."""

    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/maskloop"

    def ctl(self, *args: str, timeout_s: float = 60) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_owner(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", *args], timeout_s
        )

    def restart_in_background(self, down_s: float) -> threading.Thread:
        """Stop the server (``-m fast``: every session is terminated), keep it down ``down_s``, start it again."""

        def run() -> None:
            self.ctl("stop", "-m", "fast")
            time.sleep(down_s)
            self.ctl("start")

        thread = threading.Thread(target=run, name="pg-restart", daemon=True)
        thread.start()
        return thread


def _as_owner(argv: list[str], timeout_s: float) -> None:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user when we are root."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, timeout=timeout_s, capture_output=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"initdb not found in {PG_BIN}: the catalog faults need a PostgreSQL installation")
    # not under pytest's tmp dir: root's is private (0700) and the server runs as the postgres user
    root = Path(tempfile.mkdtemp(prefix="maskloop-faults-pg-"))
    data = root / "data"
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    _as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], 120)
    cluster = PgCluster(data, free_port(), root / "pg.log")
    if os.geteuid() == 0:
        cluster.log.touch()
        shutil.chown(cluster.log, "postgres")
    cluster.ctl("start")
    try:
        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE maskloop"))
        admin.dispose()
        yield cluster
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0)
            + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            timeout=60,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def catalog_url(pg_cluster: PgCluster) -> Iterator[str]:
    """This module's flows write to the test-owned cluster (a fresh schema per test: drop everything after)."""
    yield pg_cluster.url
    engine = create_engine(pg_cluster.url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def test_postgres_restarted_mid_run_then_the_run_or_a_plain_rerun_completes_with_nothing_half_written(
    prefect_api: str,
    pg_cluster: PgCluster,
    flow_settings: Settings,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = fill_bucket(images=8, videos=0, broken=0)
    project = f"pg-{bucket[-6:]}"
    row = figures("PostgreSQL restarted mid-run (stop -m fast, 3 s down)", "the catalog's own server (test cluster)")
    restarts: list[threading.Thread] = []
    triggered: list[float] = []
    with fault_proxy(str(flow_settings.s3_endpoint_url)) as proxy:
        maskloop_env(monkeypatch, flow_settings, S3_ENDPOINT_URL=proxy.url)
        # the restart begins when the third image is downloaded: batch 1 is being segmented or imported meanwhile
        proxy.add(
            Fault(
                "GET",
                f"/{bucket}/{keys['image'][2]}",
                kind="hook",
                times=1,
                action=lambda: (
                    triggered.append(time.monotonic()),
                    restarts.append(pg_cluster.restart_in_background(3.0)),
                ),
            )
        )
        first = prelabel(f"s3://{bucket}/in/", "--project", project)
        assert restarts, "the restart was never triggered"
        restarts[0].join(120)
        assert not restarts[0].is_alive(), "PostgreSQL did not come back"
        if first.code == 0:
            assert (first.done, first.failed) == (8, 0), first.out
            row.runs_completed = 1
        else:
            assert "catalog database" in first.err and "rerun" in first.err, first.err
            row.runs_stopped = 1
            second = prelabel(f"s3://{bucket}/in/", "--project", project)
            assert second.code == 0 and second.failed == 0, f"{second.out}\n{second.err}"
            row.runs_completed = 1
        row.recover_s = time.monotonic() - triggered[0]  # from the stop until a run has completed
    catalog = Catalog(flow_settings.resolved_database_url, migrate=False)
    try:
        checked = check_invariant(catalog, s3, ls_client, bucket, "in/", project)
    finally:
        catalog.dispose()
    assert checked.tasks == 8
    row.injected, row.assets_lost, row.duplicates = 1, checked.lost, checked.duplicates
    error = [line for line in first.err.splitlines() if line.startswith("maskloop prelabel:")]
    row.notes.append(f"first run: {'completed' if first.code == 0 else error[0][:300] if error else first.err[-300:]}")


CLAIMER = """
import logging, sys
from sqlalchemy import event
from storage import leases
from storage.catalog import Catalog
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
catalog = Catalog(sys.argv[1], migrate=False)

@event.listens_for(catalog.engine, "connect")
def short_busy_timeout(dbapi_connection, _record):  # after the catalog's own 30 s: locks outlast it here
    dbapi_connection.execute("PRAGMA busy_timeout=%d" % int(sys.argv[3]))

owner, claimed = sys.argv[2], []
while (lease := leases.claim(catalog, owner, 60.0)) is not None:
    assert leases.renew(catalog, lease, 60.0) is not None, f"lost unit {lease.unit_id}"
    assert leases.finish(catalog, lease), f"could not finish unit {lease.unit_id}"
    claimed.append(lease.unit_id)
print(" ".join(map(str, claimed)))
"""

# The fault: another writer takes the database's write lock (BEGIN IMMEDIATE) and holds it longer than the claimers'
# busy timeout, a few times, as a long migration, a backup or a stuck writer would.
LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for _ in range(int(sys.argv[2])):
    time.sleep(0.5)
    conn.execute("BEGIN IMMEDIATE")
    time.sleep(float(sys.argv[3]))
    conn.execute("COMMIT")
"""
HOLDS, HOLD_S, BUSY_MS = 3, 1.0, 100


def test_sqlite_two_processes_claiming_work_units_meet_database_locked_and_each_unit_is_done_once(
    tmp_path: Path, figures: Callable[..., Figures]
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    units = 300
    with Catalog(url) as catalog:
        ids = discover(catalog, [S3Object("b", f"in/{i:04d}.png", "e", 1, None, "image") for i in range(units)])
        made = leases.shard_pending(catalog, "s3://b/in/", ids.new_asset_ids, 1)
    assert len(made) == units
    row = figures(
        "SQLite 'database is locked': two processes claiming work units, a third writer holding the lock",
        "the catalog file (three writers)",
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    path = str(tmp_path / "catalog.sqlite")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path, str(HOLDS), str(HOLD_S)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"claimer-{n}", str(BUSY_MS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    assert holder.wait(60) == 0
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    claimed = [int(u) for out, _ in results for u in out.split()]
    logs = "\n".join(err.decode() for _, err in results)
    locked = sum(int(n) for n in re.findall(r"recovered after (\d+) failed attempts", logs))
    assert "gave up" not in logs, logs[-3000:]
    assert locked > 0, "no claim met a locked database: the fault was not injected"
    assert sorted(claimed) == sorted(made), "a unit was claimed twice or never"
    with Catalog(url, migrate=False) as catalog, catalog.session() as session:
        rows = session.scalars(select(WorkUnit)).all()
        assert Counter(u.status for u in rows) == {"done": units}
        assert {u.attempts for u in rows} == {1}, "a unit was taken twice"
    row.injected, row.runs_completed = HOLDS, 2
    row.notes.append(
        f"{units} units, each claimed, renewed and finished once; {locked} transactions met 'database is locked' "
        f"(busy timeout {BUSY_MS} ms, lock held {HOLD_S:g} s) and were re-run "
        f"({', '.join(str(len(out.split())) for out, _ in results)} units per process)"
    )
