"""The CLI entry point's process-wide defaults, and what `versions export` / `show` / `gc` print."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from storage.catalog import Catalog
from storage.settings import Settings
from tests.support.dataset_versions import box_mask, make_version
from tests.support.settings_for import point_cli_at


@pytest.mark.parametrize(("preset", "expected"), [(None, "false"), ("true", "true")])
def test_cli_turns_prefect_server_telemetry_off_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None, expected: str
) -> None:
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "placeholder")  # restored after the test
    if preset is None:
        monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    else:
        monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", preset)
    monkeypatch.setenv("MASKLOOP_DATA_DIR", str(tmp_path))
    assert main(["db", "upgrade"]) == 0
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == expected


def test_versions_export_lists_every_file_and_show_preview_prints_no_pycocotools_lines(
    sqlite_catalog: Catalog,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    images = {
        "in/a/cat.png": ([box_mask(24, 32, 2, 12, 2, 20)], ["cat"]),
        "in/b/cat.png": ([box_mask(24, 32, 10, 20, 4, 30)], ["dog"]),
    }
    made, _ = make_version(sqlite_catalog, s3, bucket, images)
    point_cli_at(monkeypatch, sqlite_catalog.url, settings, tmp_path / "cli")
    out = tmp_path / "export"
    capfd.readouterr()
    assert main(["versions", "export", str(made.version.id), "--out", str(out), "--images"]) == 0
    printed = capfd.readouterr().out.splitlines()
    assert printed[0] == f"exported version {made.version.id} to {out}"
    assert [line.split()[0] for line in printed[1:]] == ["labels.json", "manifest.json", "data/"]
    assert "COCO: 2 images, 2 annotations, 2 categories" in printed[1] and printed[2].endswith("2 items")
    assert " 2 image files, " in printed[3] and len(list((out / "data").iterdir())) == 2

    assert main(["versions", "show", str(made.version.id), "--preview", str(tmp_path / "sheet.png")]) == 0
    shown = capfd.readouterr()
    assert "index" not in shown.out + shown.err and shown.out.rstrip().endswith(f"preview: {tmp_path / 'sheet.png'}")


def test_a_failing_command_prints_one_line_and_keeps_the_traceback_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MASKLOOP_DATA_DIR", str(tmp_path))
    assert main(["skipped", "not-a-uri"]) == 1
    err = capfd.readouterr().err
    assert "maskloop skipped: ValueError: expected an s3://bucket/prefix URI, got 'not-a-uri'" in err
    assert "Traceback" not in err and str(tmp_path / "logs" / "maskloop.log") in err
    assert "Traceback" in (tmp_path / "logs" / "maskloop.log").read_text()
    with pytest.raises(ValueError, match="expected an s3://bucket/prefix URI"):  # -vv: the traceback itself
        main(["-vv", "skipped", "not-a-uri"])


def test_versions_gc_deletes_what_no_version_references_and_prints_each_uri(
    sqlite_catalog: Catalog,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    made, _ = make_version(sqlite_catalog, s3, bucket, {"gc/a.png": ([box_mask(24, 32, 2, 12, 2, 20)], ["cat"])})
    s3.put_object(Bucket=bucket, Key="datasets/left-by-a-crash.json", Body=b"{}")
    point_cli_at(monkeypatch, sqlite_catalog.url, settings, tmp_path / "cli")
    dest = f"s3://{bucket}/datasets"
    capfd.readouterr()
    assert main(["versions", "gc", "--dest", dest]) == 0  # the default minimum age keeps a young object
    assert capfd.readouterr().out.splitlines() == [f"0 object(s) under {dest} that no version references deleted"]

    time.sleep(1.1)  # S3's LastModified has whole seconds
    assert main(["versions", "gc", "--dest", dest, "--min-age-s", "1"]) == 0
    assert capfd.readouterr().out.splitlines() == [
        f"deleted s3://{bucket}/datasets/left-by-a-crash.json",
        f"1 object(s) under {dest} that no version references deleted",
    ]
    kept = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="datasets/")["Contents"]}
    assert {f"s3://{bucket}/{k}" for k in kept} == {made.version.coco_uri, made.version.manifest_uri}
