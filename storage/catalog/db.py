"""Engine, sessions and migrations of the catalog (SQLite by default, PostgreSQL for shared deployments)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from model.errors import MaskloopError
from storage.retry import RetryPolicy, Transient

if TYPE_CHECKING:
    from storage.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_RETRY = RetryPolicy("catalog", attempts=8, total_s=60.0, base_delay_s=0.25)  # = Settings' catalog_retry_*


class CatalogUnavailableError(MaskloopError, RuntimeError):
    """The catalog database could not be reached, or the connection was lost, within the retry bounds. The
    transaction was rolled back: nothing of it is half-written."""

    exit_code = 3


def classify(error: BaseException) -> Transient | None:
    """The catalog's transient failures: a lost or refused connection (server restarting) and SQLite's
    ``database is locked`` / ``busy`` (another writer). Constraint violations and SQL errors are not."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return Transient()
    if isinstance(error, (OperationalError, InterfaceError)):
        text = str(error.orig if error.orig is not None else error).lower()
        if any(part in text for part in _TRANSIENT_TEXT):
            return Transient()
    return None


_TRANSIENT_TEXT = (
    "database is locked",
    "database is busy",
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "connection is closed",
    "the database system is starting up",
    "the database system is shutting down",
    "could not connect",
    "connection timeout",
    "consuming input failed",
    "no connection to the server",
    "ssl connection has been closed",
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":  # persistent: set once per file
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode, foreign keys and a busy timeout; parent dirs are created."""
    parsed = make_url(url)
    if parsed.drivername.startswith("postgresql") and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, echo=echo, pool_pre_ping=True)


def alembic_config(engine_url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` with Alembic (idempotent)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class Catalog:
    """The SQL catalog. ``Catalog(url)`` migrates on open (``migrate=False`` to skip)."""

    def __init__(self, url: str, *, migrate: bool = True, echo: bool = False, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.retry = retry or DEFAULT_RETRY  # RetryPolicy.for_catalog(settings) for the settings' bounds
        if migrate:
            self.transaction(lambda _session: upgrade(self.engine), "migrate")

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Catalog:
        """The catalog at ``settings.resolved_database_url`` with the retry bounds ``settings.catalog_retry_*``."""
        return cls(settings.resolved_database_url, retry=RetryPolicy.for_catalog(settings), **options)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back when it raises.

        Its connection is taken before the block runs, waiting within ``self.retry`` while the database restarts;
        a connection lost inside the block raises :class:`CatalogUnavailableError` (the block is not re-run: use
        :meth:`transaction` for work that may be)."""
        session = self._sessions()
        try:
            self.retry.call(session.connection, f"connect to the catalog {self.where}", classify)
        except Exception as error:
            session.close()
            if classify(error) is None:
                raise
            raise self._unavailable(error) from error
        try:
            yield session
            session.commit()
        except BaseException as error:
            try:
                session.rollback()
            except DBAPIError:  # the connection is gone; the server rolled the transaction back itself
                log.debug("rollback on a lost catalog connection failed", exc_info=True)
            if isinstance(error, Exception) and classify(error) is not None:
                raise self._unavailable(error) from error
            raise
        finally:
            session.close()

    def transaction(self, work: Callable[[Session], T], what: str) -> T:
        """``work(session)`` in one transaction, re-run whole (within ``self.retry``) when the connection is lost or
        SQLite reports the database locked; ``work`` must only touch the database. Raises
        :class:`CatalogUnavailableError` when the bounds are spent."""

        def once() -> T:
            session = self._sessions()
            try:
                result = work(session)
                session.commit()
                return result
            except BaseException:
                try:
                    session.rollback()
                except DBAPIError:
                    log.debug("rollback on a lost catalog connection failed", exc_info=True)
                raise
            finally:
                session.close()

        try:
            return self.retry.call(once, f"{what} in the catalog {self.where}", classify)
        except Exception as error:
            if classify(error) is None:
                raise
            raise self._unavailable(error) from error

    @property
    def where(self) -> str:
        """The database's URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def _unavailable(self, error: BaseException) -> CatalogUnavailableError:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]
        return CatalogUnavailableError(
            f"the catalog database {self.where} is unavailable ({reason}); the transaction was rolled back, "
            "nothing of it is half-written: check that the database runs and answers, then rerun the command "
            f"(retries: {self.retry.attempts} attempts, {self.retry.total_s:g} s, MASKLOOP_CATALOG_RETRY_*)"
        )

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string(hide_password=True)!r})"
