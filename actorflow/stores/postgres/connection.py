"""The connection side of a PostgresStore: pool, retrying call, dedicated connections.

psycopg 3's sync API runs in trio worker threads (``trio.to_thread.run_sync`` with a
:class:`trio.CapacityLimiter` as large as the connection pool, so no thread ever waits
for a connection while holding a worker slot another call could use). Every query of the
store, its group commit (``batch.py``), its LISTEN side (``listen.py``) and its shard
leases (``shards.py``) goes through :class:`PgConnection`; none of them reaches into the
store. psycopg is imported lazily: importing actorflow does not need it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import trio

from actorflow._model.errors import SchemaVersionError, StoreError
from actorflow._model.text import is_valid_text
from actorflow.stores import realtime
from actorflow.stores.postgres.schema import migrate

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.rows import TupleRow
    from psycopg_pool import ConnectionPool

    _Conn = Connection[TupleRow]
    _Pool = ConnectionPool[_Conn]

R = TypeVar("R")

_INSTALL_HINT = "PostgresStore needs psycopg 3 and psycopg-pool: pip install actorflow[postgres]"
_URI_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^@/\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_RECONNECT_TIMEOUT = 4.0
# libpq refusals that retrying will not cure (the server answered: wrong database, user,
# password, access rules). Anything else while connecting counts as "not reachable yet".
_REFUSED = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    "permission denied",
)
# The lease and LISTEN connections notice a dead server or network within seconds: TCP
# keepalives while idle, and a bound on unacknowledged data while a query is in flight.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise StoreError(f"{_INSTALL_HINT} ({exc})") from None


class ServerUnavailable(StoreError):
    """PostgreSQL could not be reached (down, restarting, network): worth retrying."""

    transient = True


def _unreachable(exc: BaseException) -> bool:
    """Whether a failure to connect is worth retrying (see ``_REFUSED``)."""
    text = str(exc)
    return not any(reason in text for reason in _REFUSED)


class Transient(Exception):
    """An attempt failed in a way worth retrying (connection lost, pool timeout, deadlock)."""

    def __init__(self, cause: BaseException, *, sent: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.sent = sent


_TRANSIENT_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
"""Admin or crash shutdown, the server starting up, too many connections."""


def is_transient(conn: _Conn, exc: Exception) -> bool:
    """Whether a request failed by no fault of its own: the connection is gone or going,
    or the transaction was rolled back by a deadlock or serialization failure. Such a
    request is sent again; any other error (even one psycopg files as operational, such
    as an index row too large, a full disk or a statement timeout) is the request's own:
    a batch is rerun write by write, a single write fails."""
    import psycopg
    import psycopg.errors

    if conn.broken or isinstance(
        exc, psycopg.errors.TransactionRollback | psycopg.errors.LockNotAvailable
    ):
        return True
    state = getattr(exc, "sqlstate", None)
    if state is None:  # raised by the client library: the connection, not the request
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _TRANSIENT_STATES


@final
class PgConnection:
    """The connection side of a PostgresStore: its pool, the retrying call every query
    goes through, dedicated connections (leases, LISTEN), and error text without the
    password. Construction does no I/O; the pool opens (and migrates ``schema``) on first
    use."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        pool_size: int,
        connect_timeout: float,
        retry_timeout: float,
    ) -> None:
        _require_psycopg()
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        self._password: str | None = None
        if not is_valid_text(dsn) or "\x00" in dsn:
            # Not echoed: a DSN may hold a password.
            raise StoreError(
                "invalid PostgreSQL DSN: it holds a NUL character or a lone surrogate "
                "(not valid Unicode text), which libpq cannot take"
            )
        try:
            params = conninfo_to_dict(dsn)
        except ProgrammingError as exc:
            raise StoreError(f"invalid PostgreSQL DSN: {self.scrub(str(exc))}") from None
        password = params.get("password")
        self._password = str(password) if password else None
        host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST")
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        user = params.get("user") or os.environ.get("PGUSER") or getpass.getuser()
        dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
        self.where = f"{host or 'localhost'}:{port}/{dbname} (user {user})"
        """Where the server is, for messages (never the password)."""
        self.connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self.connect_kwargs["connect_timeout"] = max(2, round(connect_timeout))
        if "application_name" not in params:
            self.connect_kwargs["application_name"] = "actorflow"
        self.dsn = dsn
        self.schema = schema
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._retry_timeout = retry_timeout
        self._limiter = trio.CapacityLimiter(pool_size)
        self._open_lock = trio.Lock()
        self._pool: _Pool | None = None
        self.closed = False
        self.calls = 0
        """Database round trips made so far: pooled calls and dedicated connections' calls
        (for tests and tuning)."""

    async def close(self, *, drop: bytes | None = None) -> None:
        """Close the pool, first running ``drop`` (SQL) when given. Idempotent."""
        self.closed = True
        with trio.CancelScope(shield=True):
            async with self._open_lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                await realtime.to_thread(self._close_sync, pool, drop)

    def scrub(self, text: str) -> str:
        """``text`` without the password, whatever form the DSN gave it in."""
        password = self._password
        if password and len(password) >= 3:
            text = text.replace(password, "***")
        text = _URI_PASSWORD.sub(r"\1***@", text)
        return _KV_PASSWORD.sub(r"\1***", text)

    def describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return self.scrub(text)

    async def open(self) -> _Pool:
        if self.closed:
            raise StoreError(f"PostgreSQL at {self.where}: the store is closed")
        pool = self._pool
        if pool is not None:
            return pool
        async with self._open_lock:
            if self._pool is None:
                opened = await realtime.to_thread(self._open_sync, limiter=self._limiter)
                if self.closed:
                    await realtime.to_thread(opened.close)
                    raise StoreError(f"PostgreSQL at {self.where}: the store is closed")
                self._pool = opened
            return self._pool

    def _open_sync(self) -> _Pool:
        import psycopg
        from psycopg_pool import ConnectionPool

        try:
            conn = psycopg.connect(self.dsn, autocommit=True, **self.connect_kwargs)
        except psycopg.Error as exc:
            error = ServerUnavailable if _unreachable(exc) else StoreError
            raise error(
                f"cannot connect to PostgreSQL at {self.where}: {self.describe(exc)}"
            ) from None
        try:
            with conn, conn.transaction():
                migrate(conn, self.schema)
        except SchemaVersionError:
            raise
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot prepare schema {self.schema!r} in PostgreSQL at {self.where}: "
                f"{self.describe(exc)}"
            ) from None

        def configure(conn: _Conn) -> None:
            conn.execute("SET TIME ZONE 'UTC'")

        pool: _Pool = ConnectionPool(
            self.dsn,
            kwargs={"autocommit": True, **self.connect_kwargs},
            min_size=1,
            max_size=self._pool_size,
            open=False,
            configure=configure,
            name=f"actorflow:{self.schema}",
            timeout=self._connect_timeout,
            # The pool retries a lost connection with a doubling delay until this runs out,
            # then gives the slot up and grows again on demand. Unbounded doubling would
            # keep the store down for minutes after the server is back; this bounds the
            # gap between attempts to a few seconds.
            reconnect_timeout=_RECONNECT_TIMEOUT,
        )
        pool.open(wait=False)
        return pool

    def _attempt(self, pool: _Pool, fn: Callable[[_Conn], R], timeout: float) -> R:
        """One try of ``fn`` on a pooled connection, in a worker thread."""
        import psycopg

        try:
            conn = pool.getconn(timeout=timeout)
        except psycopg.OperationalError as exc:  # PoolTimeout, PoolClosed
            raise Transient(exc, sent=False) from exc
        broken = False
        try:
            return fn(conn)
        except psycopg.Error as exc:
            broken = conn.broken
            if is_transient(conn, exc):  # connection lost, deadlock, shutdown...: try again
                raise Transient(exc, sent=True) from exc
            # Refused for good, even when psycopg files it as operational (an index row
            # too large, a full disk, a statement timeout): retrying will not help.
            raise StoreError(
                f"PostgreSQL at {self.where} refused a request: {self.describe(exc)}"
            ) from None
        finally:
            pool.putconn(conn)
            if broken:
                # The server may have dropped every connection (restart, failover):
                # weed out the dead idle ones now instead of failing on each in turn.
                with contextlib.suppress(psycopg.Error):
                    pool.check()

    def _probe(self) -> str | None:
        """Why a new connection fails right now (for error messages), or None."""
        import psycopg

        try:
            with psycopg.connect(self.dsn, **{**self.connect_kwargs, "connect_timeout": 2}):
                return None
        except psycopg.Error as exc:
            return self.describe(exc)

    async def call(self, what: str, fn: Callable[[_Conn], R], *, write: bool = False) -> R:
        """Run ``fn`` in a worker thread; retry transient failures for a bounded time.

        Reads are retried freely. Writes are retried too: each one is a single statement
        that recognises its own earlier commit by its writer token, so a retry after a lost
        answer never applies it twice and never reports success for a write that did not
        commit. When time runs out a StoreError says whether the write may have happened.
        """
        pool = await self.open()
        self.calls += 1
        start = trio.current_time()
        deadline = start + self._retry_timeout
        delay = 0.02
        sent = False
        while True:
            timeout = max(0.1, min(self._connect_timeout, deadline - trio.current_time()))
            try:
                return await realtime.to_thread(
                    self._attempt, pool, fn, timeout, limiter=self._limiter
                )
            except Transient as exc:
                sent = sent or exc.sent
                cause = exc.cause
            if self.closed:
                raise StoreError(f"PostgreSQL at {self.where}: the store was closed during {what}")
            now = trio.current_time()
            if now + delay > deadline:
                reason = self.describe(cause)
                from psycopg_pool import PoolTimeout

                if isinstance(cause, PoolTimeout):
                    probed = await realtime.to_thread(self._probe, limiter=self._limiter)
                    if probed:
                        reason = f"{reason}; connecting fails: {probed}"
                message = (
                    f"PostgreSQL at {self.where}: {what} failed after retrying for "
                    f"{now - start:.1f}s: {reason}"
                )
                if write and sent:
                    message += (
                        " (the write may or may not have been stored; it was not reported as done)"
                    )
                raise StoreError(message) from None
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def dedicated(self, what: str) -> Dedicated:
        """A connection of its own, outside the pool (see :class:`Dedicated`)."""
        return Dedicated(self, what)

    async def notify(self, channel: str, payload: str) -> None:
        """NOTIFY ``channel`` with ``payload`` on a pooled connection."""

        def notify(conn: _Conn) -> None:
            conn.execute(b"SELECT pg_notify(%s, %s)", [channel, payload])

        await self.call("notify", notify)

    def listen_connect(self, channel: str) -> _Conn:
        """A new connection that LISTENs on ``channel`` (in a worker thread)."""
        import psycopg

        kwargs = {**self.connect_kwargs, "application_name": "actorflow-listen"}
        conn = psycopg.connect(self.dsn, autocommit=True, **self.keepalives(kwargs))
        try:
            conn.execute(f"LISTEN {channel}".encode())
        except BaseException:
            conn.close()
            raise
        return conn

    def keepalives(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self.dsn)
        return {**kwargs, **{k: v for k, v in _KEEPALIVES.items() if k not in given}}

    def _close_sync(self, pool: _Pool, drop: bytes | None) -> None:
        import psycopg

        try:
            if drop is not None:
                with pool.connection(timeout=self._connect_timeout) as conn:
                    conn.execute(drop)
        except psycopg.Error as exc:
            raise StoreError(
                f"could not drop schema {self.schema!r} at {self.where}: {self.describe(exc)}"
            ) from None
        finally:
            pool.close()


@final
class Dedicated:
    """A connection of its own, outside the pool, for the lease protocol: a renewal must
    never queue behind a busy worker's pooled calls, or the worker would lose its leases
    for being busy. Calls run one at a time in a worker thread; a lost connection is
    reopened on the next call."""

    def __init__(self, db: PgConnection, what: str) -> None:
        self._db = db
        self._what = what
        self._conn: _Conn | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[[_Conn], R], *, attempts: int = 2) -> R:
        """``fn(connection)`` in a thread; a broken connection is replaced and ``fn``
        tried again (``attempts`` in all). Raises ServerUnavailable or StoreError."""
        self._db.calls += 1
        return await realtime.to_thread(self._run, fn, attempts, limiter=self._limiter)

    def _run(self, fn: Callable[[_Conn], R], attempts: int) -> R:
        import psycopg

        db = self._db
        for attempt in range(1, attempts + 1):
            try:
                conn = self._conn
                if conn is None or conn.closed:
                    conn = self._conn = self._connect()
                return fn(conn)
            except psycopg.OperationalError as exc:
                self._close()
                if attempt < attempts:
                    continue
                if self._conn is None and not _unreachable(exc):
                    raise StoreError(
                        f"cannot connect to PostgreSQL at {db.where}: {db.describe(exc)}"
                    ) from None
                raise ServerUnavailable(
                    f"PostgreSQL at {db.where}: {self._what} failed: {db.describe(exc)}"
                ) from None
            except psycopg.Error as exc:
                raise StoreError(
                    f"PostgreSQL at {db.where} refused {self._what}: {db.describe(exc)}"
                ) from None
        raise AssertionError("unreachable")

    def _connect(self) -> _Conn:
        import psycopg

        db = self._db
        kwargs = {**db.connect_kwargs, "application_name": "actorflow-leases"}
        conn: _Conn = psycopg.connect(db.dsn, autocommit=True, **db.keepalives(kwargs))
        try:
            conn.execute(b"SET TIME ZONE 'UTC'")
            conn.execute(b"SET statement_timeout = '5s'")
        except BaseException:
            conn.close()
            raise
        return conn

    def _close(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    async def aclose(self) -> None:
        await realtime.to_thread(self._close, limiter=self._limiter)
