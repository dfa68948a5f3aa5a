"""A private PostgreSQL server on loopback for tests: initdb in a temporary folder, as user postgres."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (BIN / "initdb").is_file() and shutil.which("runuser") is not None


class PrivatePostgres:
    """Started by start(), stopped by stop(); `url(db)` has a real password (for redaction tests)."""

    def __init__(self, settings: list[str] | None = None) -> None:
        # server settings, as `postgres -c` takes them (last wins)
        self.settings = ["max_connections=200", *(settings or [])]
        self.folder = Path(tempfile.mkdtemp(prefix="ppo-tuner-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)

    def _as_postgres(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True,
                              text=True, **kwargs)

    def start(self) -> PrivatePostgres:
        shutil.chown(self.folder, "postgres")
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password)
        shutil.chown(pwfile, "postgres")
        self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                          "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8")
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start the server on its data folder (again, after stop_server)."""
        options = " ".join([f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                            *(f"-c {setting}" for setting in self.settings)])
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                          str(self.folder / "log"), "-w", "start")

    def stop_server(self) -> None:
        """Stop the server, dropping every connection (pg_ctl -m fast); its data is kept for start_server."""
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_db(self, name: str) -> str:
        self._as_postgres(str(BIN / "createdb"), "-h", str(self.folder), "-p", str(self.port), name)
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        try:
            self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
