"""The PostgreSQL advisory lock that workers take to do something once (a new store's schema, a
study's creation, the champion decision): held across an idle transaction timeout by its
keep-alive, and a lock lost with its session said at once. Real PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy

from fmnist_exp.scale import locks
from tests.conftest import fresh_db

HERE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"


def _holders(admin: sqlalchemy.engine.Engine) -> int:
    """Granted advisory locks in the test's own database."""
    with admin.connect() as c:
        return int(c.execute(sqlalchemy.text(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                             f"AND granted AND {HERE}")).scalar() or 0)


def _engine(url: str, idle_timeout_ms: int) -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool,
        connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_timeout_ms}"})


@pytest.mark.slow
def test_a_held_lock_outlives_the_idle_transaction_timeout(pg_admin, monkeypatch, capsys):
    url = fresh_db(pg_admin, "locks")
    monkeypatch.setattr(locks, "KEEPALIVE_S", 0.3)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with locks.advisory_lock(_engine(url, 1000), "held"):
        time.sleep(3.0)  # three idle transaction timeouts: without the keep-alive the server ends the session
        assert _holders(admin) == 1
        # a second holder waits while the first holds it: once it asks again, it was refused
        entered, asks = threading.Event(), threading.Semaphore(0)
        engine = _engine(url, 1000)

        def asked(conn, cursor, statement, *args):
            if "advisory" in statement:
                asks.release()

        sqlalchemy.event.listen(engine, "after_cursor_execute", asked)

        def second():
            with locks.advisory_lock(engine, "held"):
                entered.set()

        t = threading.Thread(target=second)
        t.start()
        assert asks.acquire(timeout=30) and asks.acquire(timeout=30), "the second holder never asked twice"
        assert not entered.is_set()
    t.join(timeout=30)
    assert entered.is_set() and _holders(admin) == 0
    assert "was lost" not in capsys.readouterr().err
    admin.dispose()


@pytest.mark.slow
def test_a_lock_lost_with_its_session_is_said(pg_admin, monkeypatch, capsys):
    url = fresh_db(pg_admin, "locks")
    monkeypatch.setattr(locks, "KEEPALIVE_S", 0.3)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with locks.advisory_lock(_engine(url, 0), "lost"):
        assert _holders(admin) == 1
        with admin.connect() as c:  # an operator's pg_terminate_backend, or a server restart, ends the session
            c.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_locks "
                                      f"WHERE locktype = 'advisory' AND {HERE}"))
        deadline = time.monotonic() + 10
        while "was lost" not in (err := capsys.readouterr().err) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "the lock 'lost' was lost with its database session" in err
        assert _holders(admin) == 0
    admin.dispose()
