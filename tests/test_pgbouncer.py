"""The PostgreSQL advisory locks (the registration lock, and StorageURL.lock, under which workers
open the study store and create the study) through PgBouncer in transaction pooling mode (the mode
bench/bench_scale.py and the README's many-worker settings use), where a client holds a server
connection only for the length of a transaction: consecutive transactions of one client may run
on different server sessions, and one server session serves many clients in turn.

So a session advisory lock is not the client's: taken in one transaction it stays on a server
session that PgBouncer then lends to other clients (who take it again at once, advisory locks
being re-entrant), and a waiter blocked in ``pg_advisory_lock`` holds a server connection while
it waits: as many waiters as the pool has connections, and the holder has none left for its own
storage calls. Real processes, a real pgbouncer (Debian's package; skipped without it, a failure
under CI=true) in front of the test PostgreSQL (conftest.pg_admin).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy
from conftest import free_port, fresh_db, subprocess_env

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
MODEL = "fmnist-classifier"

# One worker's turn under the lock (``how``: StorageURL.registration_lock, or StorageURL.lock, the
# one workers open the study store and create the study under): wait for the word, ask, and once
# in, wait for the file ``query_when`` (if named), call the storage through PgBouncer on a
# connection of its own (as the work under either lock does), then hold on for ``hold`` s, so that
# a turn that overlapped another would show in the times. Touches <out>.asked as its lock request
# goes to the database, and writes when it asked, got in, how long its call took and when it left.
HOLD = """
import json, sys, time
from pathlib import Path
import sqlalchemy
from fmnist_exp.scale.storage import StorageURL
url, name, go, out, query_when, hold, how = sys.argv[1:8]
storage = StorageURL.parse(url)

def asking(conn, cursor, statement, *args):
    if "advisory" in statement:
        Path(out + ".asked").touch()

sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", asking)
Path(out + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.005)
asked = time.time()
with getattr(storage, how)(name):
    entered = time.time()
    while query_when and not Path(query_when).exists():
        time.sleep(0.005)
    called = time.time()
    engine = storage.engine()
    with engine.connect() as c:
        c.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity")).scalar()
    engine.dispose()
    call_s = time.time() - called
    time.sleep(float(hold))
    left = time.time()
Path(out).write_text(json.dumps({"asked": asked, "entered": entered, "call_s": call_s, "left": left}))
"""

@contextlib.contextmanager
def pgbouncer(pg_url: str, pool_size: int, query_wait_timeout: int = 120):
    """A real pgbouncer in transaction pooling mode in front of ``pg_url``'s server; yields the
    port. Runs as user postgres when the tests run as root (pgbouncer refuses root)."""
    if not Path(PGBOUNCER).exists():
        msg = "pgbouncer is not installed (apt-get install pgbouncer; scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI must run the PgBouncer tests")
        pytest.skip(msg)
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
                time.sleep(0.3)
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


def start(url: str, folder: Path, who: str, go: Path, hold: float, query_when: Path | None = None,
          how: str = "registration_lock") -> subprocess.Popen:
    out = folder / f"{who}.json"
    cmd = [sys.executable, "-c", HOLD, url, MODEL, str(go), str(out), str(query_when or ""), str(hold), how]
    return subprocess.Popen(cmd, env=subprocess_env(), stdout=open(folder / f"{who}.log", "w"),
                            stderr=subprocess.STDOUT)


def wait_ready(folder: Path, who: list[str], procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not all((folder / f"{w}.json.ready").exists() for w in who):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            pytest.fail("a worker never got ready:\n" + logs(folder))
        time.sleep(0.05)


def asked(folder: Path, who: list[str]) -> bool:
    """Whether each of ``who`` has sent its lock request to the database."""
    return all((folder / f"{w}.json.asked").exists() for w in who)


def advisory_locks(direct: sqlalchemy.engine.Engine, granted: bool) -> int:
    """Advisory locks (granted, or asked for and waited on) in the database, seen past PgBouncer."""
    with direct.connect() as c:
        return c.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = :g "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"), {"g": granted}).scalar()


def wait_for(what: str, cond, procs: list[subprocess.Popen], folder: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            pytest.fail(f"never saw {what}:\n" + logs(folder))
        time.sleep(0.05)


def finish(procs: dict[str, subprocess.Popen], folder: Path, timeout: float) -> dict[str, dict]:
    """Each worker's times, once all have exited 0 within ``timeout`` s (else fail with their logs)."""
    deadline = time.time() + timeout
    try:
        for p in procs.values():
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers still running after {timeout:.0f} s:\n" + logs(folder))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [w for w, p in procs.items() if p.returncode != 0]
    assert not failed, f"workers {failed} failed:\n" + logs(folder)
    return {w: json.loads((folder / f"{w}.json").read_text()) for w in procs}


def logs(folder: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in sorted(folder.glob("*.log")))


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


def test_registration_lock_excludes_through_pgbouncer(db, tmp_path):
    """Two workers ask at the same moment, a third while one of them holds it: their turns never
    overlap, the third waits, and once all are done no lock is left on a pooled server session."""
    pg_url, name, direct = db
    with pgbouncer(pg_url, pool_size=4) as port:
        url = bounced(pg_url, port, name)
        go_ab, go_c, go_on = tmp_path / "go-ab", tmp_path / "go-c", tmp_path / "go-on"
        procs = {w: start(url, tmp_path, w, go, hold=0.5, query_when=go_on)
                 for w, go in (("a", go_ab), ("b", go_ab), ("c", go_c))}
        wait_ready(tmp_path, list(procs), list(procs.values()))
        go_ab.touch()
        wait_for("a worker holding the lock", lambda: advisory_locks(direct, granted=True) == 1,
                 list(procs.values()), tmp_path)
        go_c.touch()
        wait_for("c asking for the lock", lambda: asked(tmp_path, ["c"]), list(procs.values()), tmp_path)
        go_on.touch()  # only now may the holder go on and leave
        times = finish(procs, tmp_path, timeout=120)
        assert_one_at_a_time(times)
        first_out = min(t["left"] for t in times.values())
        assert times["c"]["asked"] < first_out <= times["c"]["entered"], f"c did not wait for a holder: {times}"
        assert advisory_locks(direct, granted=True) == 0, "a lock outlived its holder on a pooled server session"


@pytest.mark.parametrize("how", ["registration_lock", "lock"])
def test_waiters_beyond_the_pool_leave_the_holder_a_connection(db, tmp_path, how):
    """More waiters than PgBouncer has server connections (2): the holder still makes its own
    storage calls through PgBouncer, and each waiter gets its turn. A waiter that blocks inside
    the server pins a server connection, and the holder's call waits for one until PgBouncer's
    query_wait_timeout (here 15 s) cuts it off."""
    pg_url, name, direct = db
    with pgbouncer(pg_url, pool_size=2, query_wait_timeout=15) as port:
        url = bounced(pg_url, port, name)
        go_h, go_w, go_call = tmp_path / "go-h", tmp_path / "go-w", tmp_path / "go-call"
        waiters = ["w1", "w2", "w3"]
        procs = {"holder": start(url, tmp_path, "holder", go_h, hold=0.5, query_when=go_call, how=how)}
        procs |= {w: start(url, tmp_path, w, go_w, hold=0.3, how=how) for w in waiters}
        wait_ready(tmp_path, list(procs), list(procs.values()))
        go_h.touch()
        wait_for("the holder holding the lock", lambda: advisory_locks(direct, granted=True) == 1,
                 list(procs.values()), tmp_path)
        go_w.touch()
        wait_for("every waiter asking for the lock", lambda: asked(tmp_path, waiters), list(procs.values()), tmp_path)
        go_call.touch()  # the holder's storage call, now that every waiter is asking
        times = finish(procs, tmp_path, timeout=90)
        assert_one_at_a_time(times)
        assert min(times, key=lambda w: times[w]["entered"]) == "holder"
        assert times["holder"]["call_s"] < 10, f"the holder's storage call waited for a server connection: {times}"
        assert advisory_locks(direct, granted=True) == 0
