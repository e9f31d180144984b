"""Label Studio misbehaving while ``maskloop prelabel`` imports: the session's real Label Studio behind the fault
proxy, moto's S3, Prefect's test server, the tiny SAM 2, a SQLite catalog.

Imports are POSTs that Label Studio may have committed when their answer is lost: they are never blindly re-sent;
the importer reconciles through each task's ``data.maskloop_asset_id`` first. Every case ends with the invariant
(:mod:`tests.faults.invariant`): one task per asset, no duplicate.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from storage.catalog import Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.server import LabelStudioServer
from storage.settings import Settings
from tests.faults.conftest import Figures, Outcome, failed_attempts, maskloop_env, slowest_recovery
from tests.faults.invariant import check_invariant
from tests.support.fault_proxy import Fault, FaultProxy, fault_proxy

BAD_GATEWAY = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
GATEWAY_TIMEOUT = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"


@pytest.fixture()
def ls_proxy(flow_settings: Settings, label_studio_server: LabelStudioServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    with fault_proxy(label_studio_server.url) as proxy:
        maskloop_env(monkeypatch, flow_settings, LABEL_STUDIO_URL=proxy.url)
        yield proxy


def _check(flow_settings: Settings, s3: Any, ls: LabelStudioClient, bucket: str, project: str) -> Any:
    catalog = Catalog(flow_settings.resolved_database_url, migrate=False)
    try:
        return check_invariant(catalog, s3, ls, bucket, "in/", project)
    finally:
        catalog.dispose()


def _completed(outcome: Outcome) -> Outcome:
    assert outcome.code == 0 and outcome.run is not None, f"the run did not complete:\n{outcome.out}\n{outcome.err}"
    return outcome


@pytest.mark.parametrize(
    ("fault_name", "make_faults"),
    [
        (
            "HTTP 502 on every API call, then 504 on imports (3 s bursts)",
            lambda: [
                Fault.for_seconds(3.0, "*", "/api/", status=502, body=BAD_GATEWAY, content_type="text/html"),
                Fault.for_seconds(3.0, "POST", "/import", status=504, body=GATEWAY_TIMEOUT, content_type="text/html"),
            ],
        ),
        (
            "HTTP 429 with Retry-After: 1 (3 answers)",
            lambda: [
                Fault(
                    "*",
                    "/api/",
                    status=429,
                    body=b'{"detail": "Request was throttled."}',
                    content_type="application/json",
                    headers=(("Retry-After", "1"),),
                    times=3,
                )
            ],
        ),
    ],
)
def test_label_studio_gateway_errors_and_throttling_are_retried_and_nothing_is_imported_twice(
    fault_name: str,
    make_faults: Callable[[], list[Fault]],
    prefect_api: str,
    flow_settings: Settings,
    ls_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
    retry_lines: list[str],
) -> None:
    fill_bucket(images=4, videos=0, broken=0)
    project, row = f"lsg-{bucket[-6:]}", figures(fault_name, "proxy between maskloop and Label Studio")
    for fault in make_faults():
        ls_proxy.add(fault)
    got = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    assert (got.done, got.assets, got.failed) == (4, 4, 0), got.out
    assert ls_proxy.faulted >= 2, "the fault never reached maskloop"
    # idempotent calls: one line per call that failed; imports (POST) are reconciled by the importer instead
    assert failed_attempts(retry_lines) <= ls_proxy.faulted and len(retry_lines) < ls_proxy.faulted, retry_lines
    checked = _check(flow_settings, s3, ls_client, bucket, project)
    assert checked.tasks == 4
    row.injected, row.runs_completed = ls_proxy.faulted, 1
    row.recover_s = slowest_recovery(retry_lines, ls_proxy.recovery_s)
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates


def test_label_studio_import_answer_lost_after_commit_is_reconciled_not_duplicated(
    prefect_api: str,
    flow_settings: Settings,
    ls_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
) -> None:
    fill_bucket(images=4, videos=0, broken=0)
    project = f"lsd-{bucket[-6:]}"
    row = figures("import answer lost after Label Studio committed it", "proxy between maskloop and Label Studio")
    ls_proxy.add(Fault("POST", "/import", kind="drop", times=1))  # forwarded (committed), then the connection reset
    got = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    assert (got.done, got.assets, got.failed) == (4, 4, 0), got.out
    assert ls_proxy.faulted == 1
    checked = _check(flow_settings, s3, ls_client, bucket, project)
    assert checked.tasks == 4, "the committed batch was imported again"
    row.injected, row.runs_completed, row.recover_s = 1, 1, ls_proxy.recovery_s
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates


class _Restart:
    """Kill the session's Label Studio (SIGKILL to its process group) and start it again on the same port and data
    directory in a thread; ``done`` is set when it answers again."""

    def __init__(self, server: LabelStudioServer, client: LabelStudioClient) -> None:
        self.server, self.client = server, client
        self.done = threading.Event()
        self.killed_at = self.back_at = 0.0
        self.error: BaseException | None = None

    def kill_and_restart(self) -> None:
        pid, port = self.server.pid, self.server.port
        assert pid is not None and port is not None
        group = os.getpgid(pid)
        assert group != os.getpgrp(), "Label Studio shares the test's process group; refusing to kill it"
        os.killpg(group, signal.SIGKILL)
        self.killed_at = time.monotonic()
        threading.Thread(target=self._start, args=(port,), name="ls-restart", daemon=True).start()

    def _start(self, port: int) -> None:
        try:
            if self.server._proc is not None:  # reap the killed process
                self.server._proc.wait(30)
            self.server.stop()
            self.server.requested_port = port
            self.server.start()
            if self.server.port != port:  # moved: keep the session's client working
                self.client.url = self.server.url
                self.client._http.base_url = self.server.url  # type: ignore[assignment]
            self.back_at = time.monotonic()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.done.set()


def test_label_studio_killed_and_restarted_mid_import_then_a_plain_rerun_completes(
    prefect_api: str,
    flow_settings: Settings,
    label_studio_server: LabelStudioServer,
    ls_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
) -> None:
    fill_bucket(images=6, videos=0, broken=0)
    project = f"lsk-{bucket[-6:]}"
    row = figures("Label Studio killed (SIGKILL) and restarted mid-import", "Label Studio's own process")
    restart = _Restart(label_studio_server, ls_client)
    # the second import POST kills Label Studio before it is forwarded: batch 1 is in, batch 2 meets a dead server
    ls_proxy.add(Fault("POST", "/import", kind="hook", times=1, action=lambda: None))
    ls_proxy.add(Fault("POST", "/import", kind="hook", times=1, action=restart.kill_and_restart))
    first = prelabel(f"s3://{bucket}/in/", "--project", project)
    assert restart.done.wait(240), "Label Studio did not come back within 240 s"
    assert restart.error is None, f"Label Studio did not restart: {restart.error}"
    ls_proxy.upstream = label_studio_server.url
    if first.code == 0:  # the retries outlasted the restart
        assert (first.done, first.failed) == (6, 0), first.out
        row.runs_completed = 1
    else:  # stopped with a named error naming Label Studio and what to do
        assert "Label Studio at" in first.err and "rerun" in first.err, first.err
        row.runs_stopped = 1
        second = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
        assert second.failed == 0, second.out
        row.runs_completed = 1
    checked = _check(flow_settings, s3, ls_client, bucket, project)
    assert checked.tasks == 6
    row.injected, row.recover_s = 1, time.monotonic() - restart.killed_at
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates
    row.notes.append(f"Label Studio answered again {restart.back_at - restart.killed_at:.0f} s after the kill")
