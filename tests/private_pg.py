"""A private PostgreSQL cluster in a temporary folder, on its own port, that a test may stop,
restart and log in to with its own password, leaving the shared server alone.

Runs initdb and pg_ctl from Debian's packages as user postgres when the tests run as root
(initdb refuses root), else as the current user.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class PrivatePG:
    """``start()``/``stop()``/``restart()`` a cluster whose superuser ``user`` logs in with ``password``
    (scram-sha-256 over TCP on 127.0.0.1:``port``)."""

    def __init__(self, port: int, user: str = "owner"):
        # not under pytest's tmp_path: user postgres must be able to reach the folder
        self.bin, self.folder, self.port, self.user = pg_bin(), Path(tempfile.mkdtemp(prefix="fmnist-pg-")), port, user
        self.secret = uuid.uuid4().hex[:16]  # what a test looks for in the MLflow store
        self.password = f"pw@{self.secret}"  # '@' must be URL-encoded: tests the encoded form too
        self.data = self.folder / "data"

    def _run(self, *cmd: str, timeout: int = 120) -> None:
        line = " ".join(shlex.quote(c) for c in cmd)
        if os.geteuid() == 0:
            cmd = ("su", "postgres", "-s", "/bin/sh", "-c", line)
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, cwd="/")

    def init(self) -> PrivatePG:
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.folder / "log"),
                  "-w", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        from urllib.parse import quote

        auth = f"{self.user}:{quote(self.password, safe='')}" if password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url().replace("postgresql://", "postgresql+psycopg://"),
                                          isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return name

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
