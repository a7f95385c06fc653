"""Several `connector serve` processes on one config (design §15): one leads and sends
each schedule tick, the others stand by.

- The lease is a session-level lock on the warehouse, on a connection the leader keeps
  open: `pg_try_advisory_lock` on PostgreSQL, `GET_LOCK` on MySQL/MariaDB. It dies with
  that session. When the leader's process dies, its connection closes and the lock is
  free at once. When its machine vanishes or it stops talking, the database ends the
  idle session after `LEASE_SECONDS` (`idle_session_timeout`, `wait_timeout`); the leader
  renews it with a query every `RENEW_SECONDS`. A standby tries every `RETRY_SECONDS`, so
  it leads within `LEASE_SECONDS + RETRY_SECONDS` of the leader's death.
- Ticks are claimed on that same connection, in `connector_runtime.ticks` (one row per
  connector: the last tick sent). A tick is sent only if claiming it moves the row
  forward, so no tick runs twice even if two processes believed they led. A new leader
  reads where the last one stopped and sends the current tick if it was missed (several
  missed ticks count as one, as APScheduler's `coalesce` does).
- Interval schedules fire on a grid that every process computes alike: multiples of the
  interval since the Unix epoch, shifted per connector by a fixed offset (up to a tenth
  of the interval, at most a minute), so connectors on one schedule do not fire at once.
  Cron schedules fire at their times; a connector never ticked before waits for the next.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import structlog

from .config import Config
from .schedules import MAX_JITTER_SECONDS, cron_trigger

LEASE_SECONDS = 8  # a silent leader's session is ended by its database after this
RENEW_SECONDS = 2.0
RETRY_SECONDS = 2.0
LOOP_SECONDS = 0.25  # how late a tick may be sent
_CRON_CATCH_UP = 100_000  # missed cron times walked through before giving up on exactness
_TICKS = uuid.uuid5(uuid.NAMESPACE_URL, "connector-runtime:schedule-tick")


class LeaseLost(Exception):
    """The lease's session ended: another process may lead now."""


def tick_sync_id(connector: str, due: datetime) -> str:
    """The sync id of a tick: the same in every process, so a tick sent twice is seen twice."""
    return str(uuid.uuid5(_TICKS, f"{connector}@{due.isoformat()}"))


class Ticks:
    """When each scheduled connector fires: pure, and the same in every process."""

    def __init__(self, schedules: dict[str, object]) -> None:
        self.schedules = schedules
        self._crons = {
            name: cron_trigger(s.cron) for name, s in schedules.items() if hasattr(s, "cron")
        }

    def is_cron(self, name: str) -> bool:
        return name in self._crons

    def due(self, name: str, last: datetime | None, now: datetime) -> datetime | None:
        """The latest fire time in (last, now], or None. A cron connector without `last`
        has none: it waits for its next time."""
        cron = self._crons.get(name)
        if cron is None:
            tick = self._grid_floor(name, now)
            return tick if last is None or tick > last else None
        if last is None:
            return None
        tick = None
        moment = cron.get_next_fire_time(None, last + timedelta(microseconds=1))
        for _ in range(_CRON_CATCH_UP):
            if moment is None or moment > now:
                break
            tick, moment = moment, cron.get_next_fire_time(moment, moment + timedelta(seconds=1))
        return tick

    def after(self, name: str, moment: datetime) -> datetime | None:
        """The first fire time after `moment`."""
        cron = self._crons.get(name)
        if cron is not None:
            return cron.get_next_fire_time(None, moment + timedelta(microseconds=1))
        return self._grid_floor(name, moment) + timedelta(seconds=self.schedules[name])

    def _grid_floor(self, name: str, moment: datetime) -> datetime:
        every = float(self.schedules[name])
        offset = self.offset(name)
        steps = math.floor((moment.timestamp() - offset) / every)
        return datetime.fromtimestamp(steps * every + offset, UTC)

    def offset(self, name: str) -> float:
        """The connector's fixed shift on its interval's grid, in seconds."""
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        spread = min(float(self.schedules[name]) / 10, MAX_JITTER_SECONDS)
        return int.from_bytes(digest, "big") % 1000 / 1000 * spread


class Lease:
    """The leader lease and the claimed ticks, on one connection to the warehouse."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from destinations.sql import UtcTimestamp, flavor_for
        from destinations.sqlalchemy import create_engine

        self.engine = create_engine(url)
        flavor = flavor_for(self.engine)
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("postgresql", "mysql", "mariadb"):
            raise ValueError(f"no leader lease on {self.dialect}: use PostgreSQL or MySQL")
        schema, name = flavor.runtime_name("ticks")
        key = sa.String(255)
        self.ticks = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("connector", key, primary_key=True),
            sa.Column("due_at", UtcTimestamp()),
            sa.Column("sync_id", key),
            sa.Column("claimed_at", UtcTimestamp()),
            schema=schema,
        )
        self.schema = schema
        database = self.engine.url.database or ""
        digest = hashlib.blake2b(f"connector-runtime leader {database}".encode(), digest_size=8)
        self.key = int.from_bytes(digest.digest(), "big", signed=True)  # PostgreSQL's lock
        self.lock_name = f"connector-runtime-leader/{digest.hexdigest()}"  # MySQL's
        self._conn = None
        self._held = False

    # -- the lease --------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lease if it is free; keep the connection either way (a standby retries)."""
        import sqlalchemy as sa

        if self._conn is None:
            self._conn = self._connect()
        if self.dialect == "postgresql":
            query, params = "SELECT pg_try_advisory_lock(:k)", {"k": self.key}
        else:
            query, params = "SELECT GET_LOCK(:n, 0)", {"n": self.lock_name}
        try:
            held = self._conn.execute(sa.text(query), params).scalar() in (True, 1)
        except Exception:
            self.release()
            raise
        if held:
            self._held = True
            self._create_ticks()
        return held

    def renew(self) -> None:
        """A query on the lease's session, which keeps it from timing out; LeaseLost if the
        session is gone."""
        import sqlalchemy as sa

        self._run(lambda conn: conn.execute(sa.text("SELECT 1")))

    def release(self) -> None:
        """Give the lease up and end the session (the lock would go with it, a moment later)."""
        import sqlalchemy as sa

        conn, self._conn = self._conn, None
        held, self._held = self._held, False
        if conn is None:
            return
        if held:
            unlock = (
                ("SELECT pg_advisory_unlock(:k)", {"k": self.key})
                if self.dialect == "postgresql"
                else ("SELECT RELEASE_LOCK(:n)", {"n": self.lock_name})
            )
            with suppress(Exception):  # broken already, or the database is gone
                conn.execute(sa.text(unlock[0]), unlock[1])
        with suppress(Exception):
            conn.close()

    def close(self) -> None:
        self.release()
        self.engine.dispose()

    def _connect(self):
        import sqlalchemy as sa

        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        timeout = f"{LEASE_SECONDS}s"
        settings = (
            [
                "SET application_name = 'connector-runtime leader'",
                f"SET idle_session_timeout = '{timeout}'",  # PostgreSQL 14 and later
                "SET statement_timeout = '5s'",
            ]
            if self.dialect == "postgresql"
            else [f"SET SESSION wait_timeout = {LEASE_SECONDS}"]
        )
        for statement in settings:
            with suppress(Exception):
                conn.execute(sa.text(statement))
        return conn

    def _create_ticks(self) -> None:
        import sqlalchemy as sa

        def create(conn) -> None:
            if self.schema:
                conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
            self.ticks.create(conn, checkfirst=True)

        self._run(create)

    def _run(self, work: Callable):
        """`work(connection)` on the lease's session; LeaseLost if the database fails it."""
        import sqlalchemy as sa

        if self._conn is None:
            raise LeaseLost("not holding the lease")
        try:
            return work(self._conn)
        except (sa.exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error) as exc:
            self.release()
            raise LeaseLost(f"the lease's session ended: {type(exc).__name__}") from exc

    # -- ticks ------------------------------------------------------------------------

    def last_ticks(self) -> dict[str, datetime]:
        """The last tick claimed per connector."""
        import sqlalchemy as sa

        rows = self._run(
            lambda conn: conn.execute(sa.select(self.ticks.c.connector, self.ticks.c.due_at))
        )
        return {connector: due for connector, due in rows}

    def claim(self, connector: str, due: datetime, sync_id: str) -> bool:
        """Record `due` as the connector's last tick, unless it has one as late already."""
        import sqlalchemy as sa

        ticks = self.ticks
        values = {"due_at": due, "sync_id": sync_id, "claimed_at": datetime.now(UTC)}

        def claim(conn) -> bool:
            moved = conn.execute(
                sa.update(ticks)
                .where(ticks.c.connector == connector, ticks.c.due_at < due)
                .values(values)
            ).rowcount
            if moved:
                return True
            if conn.execute(
                sa.select(ticks.c.due_at).where(ticks.c.connector == connector)
            ).first():
                return False
            try:
                conn.execute(sa.insert(ticks).values(connector=connector, **values))
            except sa.exc.IntegrityError:
                return False
            return True

        return self._run(claim)


class Ticker:
    """The schedule loop of `connector serve` under Celery: waits for the lease, then sends
    each due tick once through `send(connector, sync_id)`."""

    def __init__(
        self,
        config: Config,
        send: Callable[[str, str], None],
        stopping: threading.Event,
    ) -> None:
        schedules = {n: c.schedule for n, c in config.connectors.items() if c.schedule}
        self.ticks = Ticks(schedules)
        self.send = send
        self.stopping = stopping
        self.lease = Lease(config.warehouse)
        self.leading = threading.Event()
        self.log = structlog.get_logger()
        self._last: dict[str, datetime | None] = {}
        self._next: dict[str, datetime | None] = {}
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def next_fire(self, name: str) -> datetime | None:
        """When the connector's next tick is due (what any process would compute)."""
        if name not in self.ticks.schedules:
            return None
        planned = self._next.get(name) if self.leading.is_set() else None
        return planned or self.ticks.after(name, datetime.now(UTC))

    def _run(self) -> None:
        tried = renewed = -math.inf
        try:
            while not self.stopping.wait(LOOP_SECONDS):
                if not self.leading.is_set():
                    if time.monotonic() - tried >= RETRY_SECONDS:
                        tried = time.monotonic()
                        self._try_to_lead()
                    continue
                try:
                    if self._tick(datetime.now(UTC)):
                        renewed = time.monotonic()
                    if time.monotonic() - renewed >= RENEW_SECONDS:
                        self.lease.renew()
                        renewed = time.monotonic()
                except LeaseLost as exc:
                    self.leading.clear()
                    self.log.error("leadership_lost", reason=str(exc), hint="standing by")
        finally:
            self.lease.close()

    def _try_to_lead(self) -> None:
        try:
            if not self.lease.acquire():
                return
            last = self.lease.last_ticks()
        except LeaseLost as exc:
            self.log.warning("lease_unavailable", error=str(exc))
            return
        except Exception as exc:  # the warehouse is down: stand by and try again
            self.log.warning("lease_unavailable", error=str(exc).splitlines()[0])
            return
        now = datetime.now(UTC)
        for name in self.ticks.schedules:
            # a cron connector never ticked waits for its next time from now on
            self._last[name] = last.get(name) or (now if self.ticks.is_cron(name) else None)
            self._next[name] = None
        self.leading.set()
        self.log.warning("leading", scheduled=sorted(self.ticks.schedules))

    def _tick(self, now: datetime) -> bool:
        """Claim and send what is due; whether the lease's session was used."""
        used = False
        for name in self.ticks.schedules:
            planned = self._next.get(name)
            if planned is not None and planned > now:
                continue
            due = self.ticks.due(name, self._last.get(name), now)
            if due is not None:
                used = True
                sync_id = tick_sync_id(name, due)
                if self.lease.claim(name, due, sync_id):
                    self._send(name, due, sync_id)
                else:
                    self.log.info("tick_already_sent", connector=name, tick=due.isoformat())
                self._last[name] = due
            self._next[name] = self.ticks.after(name, due or now)
        return used

    def _send(self, name: str, due: datetime, sync_id: str) -> None:
        self.log.info("tick", connector=name, tick=due.isoformat(), sync_id=sync_id)
        try:
            self.send(name, sync_id)
        except Exception as exc:  # a bug of ours must not stop every schedule
            self.log.error("tick_not_sent", connector=name, error=repr(exc))
