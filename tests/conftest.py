"""Shared fixtures: a real S3 HTTP server (moto), catalogs on SQLite and PostgreSQL, settings pointing at them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.catalog import Catalog
from storage.s3 import make_client
from storage.settings import Settings
from tests.support.servers import moto_s3_server, postgres_available, random_credentials, throwaway_postgres_database

pytest_plugins = ["tests.storage.labelstudio.fixtures", "tests.support.flow_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``tests/reference`` (Meta's code in its own venv) is its own run: collected only when named on the command
    line (`pytest tests/reference`), not by the main suite's `pytest tests`."""
    if collection_path.name == "reference" and collection_path.parent == REPO_ROOT / "tests":
        named = any("reference" in str(arg) for arg in config.args)
        return None if named else True
    return None


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_credentials() -> tuple[str, str]:
    return random_credentials()


@pytest.fixture()
def settings(tmp_path: Path, s3_endpoint: str, s3_credentials: tuple[str, str]) -> Settings:
    key, secret = s3_credentials
    return Settings(
        data_dir=tmp_path / "data",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id=key,
        s3_secret_access_key=secret,
    )


@pytest.fixture()
def s3(settings: Settings):  # noqa: ANN201 - boto3 client
    return make_client(settings)


@pytest.fixture()
def bucket(s3) -> str:  # noqa: ANN001
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


_PG = postgres_available()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty catalog database URL: a SQLite file, then a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    if not _PG:
        pytest.skip("no PostgreSQL server answers at 127.0.0.1:5432 (set MASKLOOP_TEST_POSTGRES_URL)")
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture()
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    yield cat
    cat.dispose()


@pytest.fixture()
def sqlite_catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield cat
    cat.dispose()
