"""Objects listed and downloaded per second against local S3 servers (SeaweedFS from the stack, moto server).

.venv/bin/python -m benchmarks.bench_s3 --objects 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from storage.s3 import download_many, ensure_bucket, list_objects, make_client
from storage.settings import Settings
from storage.stack.credentials import load_or_create_credentials
from storage.stack.seaweed import SeaweedS3


@contextmanager
def seaweed(tmp: Path) -> Iterator[Settings]:
    from tests.support.servers import free_port

    ports = {}
    while len(ports) < 4:
        p = free_port()
        if p < 50000:
            ports[("s3", "master", "volume", "filer")[len(ports)]] = p
    server = SeaweedS3(tmp, load_or_create_credentials(tmp), port=ports.pop("s3"), extra_ports=ports)
    server.start()
    try:
        yield Settings(
            data_dir=tmp,
            s3_endpoint_url=server.endpoint_url,
            s3_access_key_id=server.credentials.s3_access_key_id,
            s3_secret_access_key=server.credentials.s3_secret_access_key,
        )
    finally:
        server.stop()


@contextmanager
def moto(tmp: Path) -> Iterator[Settings]:
    from tests.support.servers import moto_s3_server

    with moto_s3_server() as url:
        yield Settings(data_dir=tmp, s3_endpoint_url=url, s3_access_key_id="bench", s3_secret_access_key="bench")


def measure(settings: Settings, n: int, size: int) -> dict[str, float]:
    client = make_client(settings, max_pool=32)
    ensure_bucket(client, "bench")
    body = b"\x00" * size
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket="bench", Key=f"in/{i:06d}.jpg", Body=body), range(n)))
    t0 = time.perf_counter()
    objects = list(list_objects(client, "bench", "in/"))
    t_list = time.perf_counter() - t0
    assert len(objects) == n, len(objects)
    t0 = time.perf_counter()
    results = download_many(client, objects, settings.data_dir / "cache", max_workers=16)
    t_dl = time.perf_counter() - t0
    assert all(r.error is None for r in results)
    return {"listed_per_s": n / t_list, "downloaded_per_s": n / t_dl}


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=50_000, help="bytes per object")
    args = parser.parse_args()
    for name, server in (("seaweedfs", seaweed), ("moto", moto)):
        with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as settings:
            r = measure(settings, args.objects, args.size)
            print(
                f"{name:<10} {args.objects} objects of {args.size} B: listed {r['listed_per_s']:.0f}/s, downloaded {r['downloaded_per_s']:.0f}/s"
            )


if __name__ == "__main__":
    main()
