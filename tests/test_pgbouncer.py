"""The PostgreSQL advisory locks (the registration lock, and StorageURL.lock, under which workers
open the study store and create the study) through PgBouncer in transaction pooling mode (the mode
bench/bench_scale.py and the README's many-worker settings use), where a client holds a server
connection only for the length of a transaction: consecutive transactions of one client may run
on different server sessions, and one server session serves many clients in turn.

So a session advisory lock is not the client's: taken in one transaction it stays on a server
session that PgBouncer then lends to other clients (who take it again at once, advisory locks
being re-entrant), and a waiter blocked in ``pg_advisory_lock`` holds a server connection while
it waits: as many waiters as the pool has connections, and the holder has none left for its own
storage calls. Each worker is a thread with connections of its own (to PgBouncer, one client
each, as a process of its own would be), a real pgbouncer (Debian's package; skipped without it, a
failure under CI=true) in front of the test PostgreSQL (conftest.pg_admin).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pytest
import sqlalchemy
from conftest import free_port, fresh_db, unavailable

from fmnist_exp.scale.storage import StorageURL

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
MODEL = "fmnist-classifier"
WAIT_S = 120  # the most a worker waits for its word


class Worker(threading.Thread):
    """One worker's turn under the lock (``how``: StorageURL.registration_lock, or StorageURL.lock, the
    one workers open the study store and create the study under): wait for the word ``go``, ask, and
    once in, wait for ``query_when`` (if given), call the storage through PgBouncer on a connection of
    its own (as the work under either lock does), then hold on for ``hold`` s, so that a turn that
    overlapped another would show in the times. ``asked`` is set as its lock request goes to the
    database (:func:`watching_requests`); ``times``: when it asked, got in, how long its call took and
    when it left; ``error``: its traceback, if it failed."""

    def __init__(self, url: str, who: str, go: threading.Event, hold: float, query_when: threading.Event | None = None,
                 how: str = "registration_lock"):
        super().__init__(name=f"worker {who}", daemon=True)
        self.url, self.go, self.hold, self.query_when, self.how = url, go, hold, query_when, how
        self.asked = threading.Event()
        self.times: dict[str, float] | None = None
        self.error = ""

    def run(self) -> None:
        try:
            storage = StorageURL.parse(self.url)
            assert self.go.wait(WAIT_S), "no word to go"
            asked = time.time()
            with getattr(storage, self.how)(MODEL):
                entered = time.time()
                assert self.query_when is None or self.query_when.wait(WAIT_S), "no word to call the storage"
                called = time.time()
                engine = storage.engine()
                with engine.connect() as c:
                    c.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity")).scalar()
                engine.dispose()
                call_s = time.time() - called
                time.sleep(self.hold)  # the turn's length, so that an overlap shows in the times
                left = time.time()
            self.times = {"asked": asked, "entered": entered, "call_s": call_s, "left": left}
        except BaseException:
            self.error = traceback.format_exc()


def _asking(conn, cursor, statement, *args) -> None:
    worker = threading.current_thread()
    if isinstance(worker, Worker) and "advisory" in statement:
        worker.asked.set()


@pytest.fixture
def watching_requests():
    """Each Worker's ``asked``, set as its lock request goes to the database."""
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", _asking)
    yield
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", _asking)


@contextlib.contextmanager
def pgbouncer(pg_url: str, pool_size: int, query_wait_timeout: int = 120):
    """A real pgbouncer in transaction pooling mode in front of ``pg_url``'s server; yields the
    port. Runs as user postgres when the tests run as root (pgbouncer refuses root)."""
    if not Path(PGBOUNCER).exists():
        unavailable("pgbouncer is not installed (apt-get install pgbouncer; scripts/setup.sh does)",
                    "the PgBouncer tests")
    url = sqlalchemy.engine.make_url(pg_url)
    folder = Path(tempfile.mkdtemp(prefix="fmnist-pgbouncer-"))  # not tmp_path: user postgres reads it
    port = free_port()
    (folder / "userlist.txt").write_text(f'"{url.username}" "{url.password}"\n')
    (folder / "pgbouncer.ini").write_text(f"""[databases]
* = host={url.host} port={url.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
query_wait_timeout = {query_wait_timeout}
logfile = {folder}/pgbouncer.log
""")
    if os.geteuid() == 0:
        for path in [folder, *folder.iterdir()]:
            shutil.chown(path, "postgres", "postgres")
    cmd = [PGBOUNCER, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(folder / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                engine = sqlalchemy.create_engine(bounced(pg_url, port, url.database or "postgres"),
                                                  poolclass=sqlalchemy.pool.NullPool)
                with engine.connect() as c:
                    c.execute(sqlalchemy.text("SELECT 1"))
                engine.dispose()
                break
            except sqlalchemy.exc.OperationalError:
                if proc.poll() is not None or time.time() > deadline:
                    log = folder / "pgbouncer.log"
                    pytest.fail("pgbouncer did not start:\n" + (log.read_text()[-2000:] if log.exists() else ""))
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def bounced(pg_url: str, port: int, database: str) -> str:
    """``pg_url`` with PgBouncer's port and ``database``; psycopg 3, which never prepares a
    statement on the storage's connections (storage._engine_kwargs)."""
    url = sqlalchemy.engine.make_url(pg_url)
    return url.set(drivername="postgresql+psycopg", port=port, database=database).render_as_string(
        hide_password=False)


def start(workers: dict[str, Worker]) -> dict[str, Worker]:
    for w in workers.values():
        w.start()
    return workers


def failed(workers: dict[str, Worker]) -> str:
    return "\n".join(f"--- {w.name}\n{w.error}" for w in workers.values() if w.error)


def asked(workers: list[Worker]) -> bool:
    """Whether each of ``workers`` has sent its lock request to the database."""
    return all(w.asked.is_set() for w in workers)


def advisory_locks(direct: sqlalchemy.engine.Engine, granted: bool) -> int:
    """Advisory locks (granted, or asked for and waited on) in the database, seen past PgBouncer."""
    with direct.connect() as c:
        return c.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = :g "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"), {"g": granted}).scalar()


def wait_for(what: str, cond, workers: dict[str, Worker], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline or failed(workers):
            pytest.fail(f"never saw {what}:\n" + failed(workers))
        time.sleep(0.02)


def finish(workers: dict[str, Worker], timeout: float) -> dict[str, dict]:
    """Each worker's times, once all have finished without an error within ``timeout`` s (else fail)."""
    deadline = time.time() + timeout
    for w in workers.values():
        w.join(timeout=max(0.0, deadline - time.time()))
    running = [who for who, w in workers.items() if w.is_alive()]
    if running:
        pytest.fail(f"workers {running} still running after {timeout:.0f} s:\n" + failed(workers))
    assert not failed(workers), f"workers failed:\n{failed(workers)}"
    return {who: w.times for who, w in workers.items()}


def assert_one_at_a_time(times: dict[str, dict]) -> None:
    turns = sorted(times.items(), key=lambda kv: kv[1]["entered"])
    for (a, ta), (b, tb) in itertools.pairwise(turns):
        assert ta["left"] <= tb["entered"], (
            f"{a} held the lock until {ta['left']:.3f} but {b} was in from {tb['entered']:.3f}: {times}")


@pytest.fixture
def db(pg_admin):
    """A fresh database and a direct engine on it (for pg_locks, past PgBouncer)."""
    url = fresh_db(pg_admin, "pgbouncer")
    direct = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                                      poolclass=sqlalchemy.pool.NullPool)
    yield pg_admin[0], url.rsplit("/", 1)[1], direct
    direct.dispose()


def test_registration_lock_excludes_through_pgbouncer(db, watching_requests):
    """Two workers ask at the same moment, a third while one of them holds it: their turns never
    overlap, the third waits, and once all are done no lock is left on a pooled server session."""
    pg_url, name, direct = db
    with pgbouncer(pg_url, pool_size=4) as port:
        url = bounced(pg_url, port, name)
        go_ab, go_c, go_on = threading.Event(), threading.Event(), threading.Event()
        workers = start({w: Worker(url, w, go, hold=0.3, query_when=go_on)
                         for w, go in (("a", go_ab), ("b", go_ab), ("c", go_c))})
        go_ab.set()
        wait_for("a worker holding the lock", lambda: advisory_locks(direct, granted=True) == 1, workers)
        go_c.set()
        wait_for("c asking for the lock", lambda: asked([workers["c"]]), workers)
        go_on.set()  # only now may the holder go on and leave
        times = finish(workers, timeout=120)
        assert_one_at_a_time(times)
        first_out = min(t["left"] for t in times.values())
        assert times["c"]["asked"] < first_out <= times["c"]["entered"], f"c did not wait for a holder: {times}"
        assert advisory_locks(direct, granted=True) == 0, "a lock outlived its holder on a pooled server session"


@pytest.mark.parametrize("how", ["registration_lock", "lock"])
def test_waiters_beyond_the_pool_leave_the_holder_a_connection(db, watching_requests, how):
    """More waiters than PgBouncer has server connections (2): the holder still makes its own
    storage calls through PgBouncer, and each waiter gets its turn. A waiter that blocks inside
    the server pins a server connection, and the holder's call waits for one until PgBouncer's
    query_wait_timeout (here 15 s) cuts it off."""
    pg_url, name, direct = db
    with pgbouncer(pg_url, pool_size=2, query_wait_timeout=15) as port:
        url = bounced(pg_url, port, name)
        go_h, go_w, go_call = threading.Event(), threading.Event(), threading.Event()
        waiters = ["w1", "w2", "w3"]
        workers = start({"holder": Worker(url, "holder", go_h, hold=0.3, query_when=go_call, how=how),
                         **{w: Worker(url, w, go_w, hold=0.2, how=how) for w in waiters}})
        go_h.set()
        wait_for("the holder holding the lock", lambda: advisory_locks(direct, granted=True) == 1, workers)
        go_w.set()
        wait_for("every waiter asking for the lock", lambda: asked([workers[w] for w in waiters]), workers)
        go_call.set()  # the holder's storage call, now that every waiter is asking
        times = finish(workers, timeout=90)
        assert_one_at_a_time(times)
        assert min(times, key=lambda w: times[w]["entered"]) == "holder"
        assert times["holder"]["call_s"] < 10, f"the holder's storage call waited for a server connection: {times}"
        assert advisory_locks(direct, granted=True) == 0
