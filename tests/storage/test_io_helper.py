"""The I/O helper process: calls run in it, overlap, keep their exception types and logs, fall back to the calling
thread when it is gone, and it never finishes a call for a parent that died."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from storage.io_helper.process import IoProcess
from storage.labelstudio.client import LabelStudioError
from storage.services import Services
from storage.settings import Settings
from tasks.prelabel import is_transient

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- functions the helper runs (module level: they cross by reference) ---------------------------------------------
def raise_s3_not_found() -> None:
    raise ClientError({"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")


def raise_label_studio_503() -> None:
    raise LabelStudioError("POST", "/api/projects/1/import", 503, "busy")


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def log_and_return(value: int) -> int:
    logging.getLogger("tests.io_helper").warning("helper saw %d", value)
    return value * 2


def wait_for_file(path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


def touch(path: str) -> None:
    Path(path).touch()


def sleep_then_touch(path: str, seconds: float) -> None:
    time.sleep(seconds)
    Path(path).touch()


def clients_of(services: Services) -> tuple[int, int, int]:
    """The helper process's pid and the identities of the S3 client and catalog engine a call was given."""
    return os.getpid(), id(services.s3), id(services.catalog.engine)


@pytest.fixture(scope="module")
def io() -> Iterator[IoProcess]:
    with IoProcess() as helper:
        assert helper.wait_ready(60), "the I/O helper process did not start"
        yield helper


def test_calls_run_in_the_helper_process_not_in_the_flow(io: IoProcess) -> None:
    child = io.call(os.getpid)
    assert child == io.pid and child != os.getpid()
    assert io.call(log_and_return, 21) == 42


def test_disabled_helper_runs_calls_in_the_calling_thread() -> None:
    with IoProcess(enabled=False) as helper:
        assert helper.pid is None and helper.call(os.getpid) == os.getpid()
        assert helper.calls_in_thread == 1 and helper.calls_in_child == 0


def test_a_call_made_before_the_helper_is_ready_waits_for_it_when_allowed() -> None:
    with IoProcess(wait_ready_s=60) as helper:
        assert not helper.ready, "the helper was ready before its first call: this test proves nothing"
        assert helper.call(os.getpid) == helper.pid != os.getpid()
        assert (helper.calls_in_child, helper.calls_in_thread) == (1, 0)


def test_a_call_waiting_for_a_helper_that_died_before_ready_runs_in_the_thread_at_once() -> None:
    with IoProcess(wait_ready_s=600) as helper:
        assert helper.pid is not None
        os.kill(helper.pid, signal.SIGKILL)
        started = time.monotonic()
        assert helper.call(os.getpid) == os.getpid()
        assert time.monotonic() - started < 60, "the call waited out wait_ready_s for a dead helper"
        assert (helper.calls_in_child, helper.calls_in_thread) == (0, 1)


def test_a_download_and_an_import_run_at_the_same_time(io: IoProcess, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    waited: list[bool] = []
    waiter = threading.Thread(target=lambda: waited.append(io.call(wait_for_file, str(flag), 20.0)))
    waiter.start()
    time.sleep(0.2)
    io.call(touch, str(flag))  # if calls were served one at a time, this would wait behind the waiter
    waiter.join(30)
    assert waited == [True]


@pytest.mark.parametrize(
    ("fn", "expected_type", "transient"),
    [
        (raise_s3_not_found, ClientError, False),
        (raise_label_studio_503, LabelStudioError, True),
        (raise_unpicklable, RuntimeError, True),
    ],
)
def test_errors_cross_with_their_type_so_retry_decisions_stay_the_same(
    io: IoProcess, fn: object, expected_type: type[BaseException], transient: bool
) -> None:
    with pytest.raises(expected_type) as caught:
        io.call(fn)  # type: ignore[arg-type]
    error = caught.value
    assert any("I/O helper process" in note for note in getattr(error, "__notes__", []))

    class _State:
        def result(self, raise_on_failure: bool = False) -> BaseException:
            return error

    assert is_transient(None, None, _State()) is transient
    if isinstance(error, LabelStudioError):
        assert (error.status, error.body) == (503, "busy")
    if expected_type is RuntimeError:
        assert "Unpicklable: 1-2" in str(error)


def test_log_records_of_a_call_are_emitted_in_the_parent(io: IoProcess, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tests.io_helper"):
        io.call(log_and_return, 5)
    assert [r.getMessage() for r in caplog.records if r.name == "tests.io_helper"] == ["helper saw 5"]


def test_calls_fall_back_to_the_calling_thread_once_the_helper_is_gone() -> None:
    with IoProcess() as helper:
        assert helper.wait_ready(60)
        assert helper.pid is not None
        os.kill(helper.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while helper.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert helper.call(os.getpid) == os.getpid()
        assert helper.calls_in_thread == 1


_PARENT = """
import os, sys, time
from storage.io_helper.process import IoProcess
from storage.services import Services
from storage.settings import Settings
from tests.storage.test_io_helper import sleep_then_touch
io = IoProcess(); io.start(); assert io.wait_ready(60)
print(io.pid, flush=True)
io.call(sleep_then_touch, sys.argv[1], 2.0)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_helper_dies_with_its_parent_and_does_not_finish_the_running_call(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(marker)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the call is now sleeping in the helper
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the helper outlived its killed parent"
    time.sleep(2.5)  # past the point where the call would have finished
    assert not marker.exists(), "the helper finished a call for a dead parent"


def test_closing_a_helper_that_is_not_ready_yet_does_not_wait_for_its_start() -> None:
    """A short run closes its helper while it still imports maskloop (~1 s): it ran nothing, so it is killed at once."""
    helper = IoProcess(wait_ready_s=0.0)
    helper.start()
    pid = helper.pid
    assert pid is not None and not helper.ready
    started = time.monotonic()
    helper.close()
    assert time.monotonic() - started < 0.5
    assert _gone(pid)


def test_calls_with_the_same_settings_share_the_helpers_clients_and_other_settings_get_their_own(
    io: IoProcess, tmp_path: Path
) -> None:
    def services(name: str, secret: str) -> Services:
        settings = Settings(
            data_dir=tmp_path / name,
            s3_endpoint_url="http://127.0.0.1:9",
            s3_access_key_id="key",
            s3_secret_access_key=secret,  # type: ignore[arg-type]
        )
        return Services(settings)

    first, other_secret = services("a", "one"), services("a", "two")
    calls = [io.call(clients_of, first) for _ in range(3)]
    assert all(pid != os.getpid() for pid, _, _ in calls), "the calls ran in the helper"
    assert len(set(calls)) == 1, "one S3 client and one catalog engine for every call with these settings"
    assert io.call(clients_of, other_secret) != calls[0], "settings that differ (a secret) do not share clients"
