"""S3 source against a real HTTP S3 server (moto server mode on loopback)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.s3 import (
    S3Object,
    cache_path,
    download_many,
    list_objects,
    media_type_of,
    parse_s3_uri,
    presigned_get_url,
    presigned_url_expiry,
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.jpg", "image"),
        ("A/B.JPEG", "image"),
        ("x.png", "image"),
        ("x.webp", "image"),
        ("x.bmp", "image"),
        ("x.tif", "image"),
        ("x.TIFF", "image"),
        ("v.mp4", "video"),
        ("v.MOV", "video"),
        ("v.mkv", "video"),
        ("v.webm", "video"),
        ("v.avi", "video"),
        ("notes.txt", None),
        ("folder/", None),
        ("noext", None),
        ("", None),
        (".jpg", None),
        (".maskloop/frames/abc/000010.jpg", None),  # maskloop's own key frames are never media
        ("in/.maskloop/x.jpg", "image"),  # only the bucket-level prefix is maskloop's
    ],
)
def test_media_type_is_decided_by_extension_and_skips_what_maskloop_wrote(key: str, expected: str | None) -> None:
    assert media_type_of(key) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://my-bucket", ("my-bucket", "")),
        ("s3://my-bucket/a/b/", ("my-bucket", "a/b/")),
        ("s3://b.c.d/x", ("b.c.d", "x")),
    ],
)
def test_parse_s3_uri_splits_bucket_and_prefix(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["http://b/x", "s3://", "s3://UPPER/x", "s3://a/x", "bucket/x"])
def test_parse_s3_uri_rejects_non_s3_or_bad_bucket(uri: str) -> None:
    with pytest.raises(ValueError, match="s3|bucket"):
        parse_s3_uri(uri)


def test_listing_paginates_past_1000_objects_and_filters_media(s3, bucket: str) -> None:  # noqa: ANN001
    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"raw/img_{i:05d}.jpg", Body=b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1203)))
    s3.put_object(Bucket=bucket, Key="raw/readme.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="raw/clip.mp4", Body=b"xyz")
    s3.put_object(Bucket=bucket, Key="other/img.jpg", Body=b"x")

    objects = list(list_objects(s3, bucket, "raw/"))
    assert len(objects) == 1204
    assert len({o.key for o in objects}) == 1204
    assert sum(o.media_type == "video" for o in objects) == 1
    videos_only = list(list_objects(s3, bucket, "raw/", media=("video",)))
    assert [o.key for o in videos_only] == ["raw/clip.mp4"]
    assert all(o.etag and '"' not in o.etag for o in objects)


HOSTILE_KEYS = [
    "../../etc/passwd.jpg",
    "/absolute/path.png",
    "a/../../../../escape.jpg",
    "nul\x00byte.jpg",
    "x" * 1000 + ".jpg",
    "ünïcödé/日本語/画像.jpg",
    "..",
    "./.",
    "C:\\windows\\system32.png",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_cache_path_of_hostile_key_stays_inside_cache_dir(tmp_path: Path, key: str) -> None:
    path = cache_path(tmp_path / "cache", "bucket", key, "etag")
    assert path.is_relative_to((tmp_path / "cache").resolve())
    assert len(path.name) < 100
    assert "\x00" not in str(path)


def test_cache_path_differs_per_etag_revision(tmp_path: Path) -> None:
    assert cache_path(tmp_path, "bucket", "a.jpg", "e1") != cache_path(tmp_path, "bucket", "a.jpg", "e2")


def test_download_many_writes_inside_cache_and_reports_missing_object(s3, bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    keys = ["../../evil.jpg", "ok/a.png", "ünï/b.jpg"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = list(list_objects(s3, bucket))
    gone = S3Object(bucket, "deleted-after-listing.jpg", "abc", 3, None, "image")
    results = download_many(s3, [*listed, gone], tmp_path / "cache", max_workers=4)
    by_key = {r.obj.key: r for r in results}
    for key in keys:
        assert by_key[key].error is None
        assert by_key[key].path is not None and by_key[key].path.read_bytes() == key.encode()
        assert by_key[key].path.is_relative_to((tmp_path / "cache").resolve())
    assert by_key[gone.key].path is None
    assert "deleted-after-listing.jpg" in (by_key[gone.key].error or "")
    assert not (tmp_path / "evil.jpg").exists()


def test_presigned_url_serves_the_object_over_http(s3, bucket: str) -> None:  # noqa: ANN001
    import httpx

    s3.put_object(Bucket=bucket, Key="p/x.png", Body=b"pixels")
    url = presigned_get_url(s3, bucket, "p/x.png", ttl_s=3600)
    assert "X-Amz-Signature" in url
    assert httpx.get(url).content == b"pixels"


def test_clients_share_parsed_service_models_but_close_independently(settings, bucket: str) -> None:  # noqa: ANN001
    from storage.s3 import make_client

    first, second = make_client(settings), make_client(settings)
    assert first is not second
    assert first._loader is second._loader  # S3's service model is parsed once per process, not per client
    paths = list(first._loader.search_paths)
    make_client(settings)
    assert first._loader.search_paths == paths and len(set(paths)) == len(paths)  # no path added per client
    first.put_object(Bucket=bucket, Key="a.png", Body=b"x")
    first.close()
    assert second.get_object(Bucket=bucket, Key="a.png")["Body"].read() == b"x"


SIGNED = datetime(2026, 12, 6, 20, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://s3:8333/b/k.jpg?X-Amz-Date=20261206T203005Z&X-Amz-Expires=604800&X-Amz-Signature=ab",
            SIGNED + timedelta(days=7),
        ),
        (
            "http://s3/b/k.jpg?X-Amz-Expires=60&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261206T203005Z",
            SIGNED + timedelta(seconds=60),
        ),
        ("http://s3/b/k.jpg?AWSAccessKeyId=a&Expires=1796588400&Signature=s", datetime.fromtimestamp(1796588400, UTC)),
        ("http://s3/b/k.jpg?X-Amz-Date=20261206T203005Z&X-Amz-Expires=0", SIGNED),
        ("http://127.0.0.1:9/img/1.jpg", None),  # not presigned: no expiry
        ("", None),
        ("http://s3/b/k.jpg?X-Amz-Date=20261206T203005Z", None),  # half a signature
        ("http://s3/b/k.jpg?X-Amz-Date=yesterday&X-Amz-Expires=60", None),
        ("http://s3/b/k.jpg?X-Amz-Date=20261206T203005Z&X-Amz-Expires=soon", None),
        ("http://s3/b/k.jpg?Expires=99999999999999999999", None),
    ],
)
def test_presigned_url_expiry_reads_sigv4_and_sigv2_urls_and_nothing_else(url: str, expected: datetime | None) -> None:
    assert presigned_url_expiry(url) == expected


def test_a_presigned_url_expires_after_its_lifetime(s3, bucket: str) -> None:  # noqa: ANN001
    before = datetime.now(UTC).replace(microsecond=0)
    expiry = presigned_url_expiry(presigned_get_url(s3, bucket, "a/b c.jpg", 3600))
    assert expiry is not None and before + timedelta(seconds=3600) <= expiry <= datetime.now(UTC) + timedelta(
        seconds=3600
    )
