"""A throwaway PostgreSQL server for the test session.

initdb into a temp dir (trust auth, UTF8, no fsync), start it on a free TCP
port on 127.0.0.1 with its unix socket inside the temp dir, hand out fresh
databases, stop it (-m fast) and delete everything at the end. initdb and the
server refuse to run as root, so under euid 0 the server commands run as the
`postgres` system user (created if missing).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

PG_USER = "postgres"  # database superuser created by initdb (-U)
SYSTEM_USER = "postgres"  # OS user that runs the server when the tests run as root


class PgUnavailable(RuntimeError):
    """PostgreSQL server binaries were not found."""


def find_bindir() -> Path:
    """Directory holding initdb and pg_ctl: PATH first, then /usr/lib/postgresql/<newest>/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    for d in candidates:
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK):
            return Path(d)
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; "
        "install them with `apt-get install -y postgresql` to run the PostgreSQL half of the storage tests"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"tests/pg.py: running as root, PostgreSQL needs the `{SYSTEM_USER}` user, and "
                f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}"
            ) from None
        return pwd.getpwnam(SYSTEM_USER)


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int = 0
    as_user: str | None = None
    shared_db: str | None = None  # database holding the per-test schemas (fresh_schema)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"tests/pg.py: `{' '.join(cmd)}` failed with exit code {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\nserver log: {log}"
            )
        return proc

    def start(self) -> None:
        for d in (self.root, self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            for d in (self.root, self.sockdir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        last_error: Exception | None = None
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                    f"-c unix_socket_directories={self.sockdir} -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off -c max_connections=100")
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts,
                          "-w", "-t", "60", "start")
                return
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"tests/pg.py: PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", schema: str | None = None) -> str:
        url = f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{dbname}"
        if schema is not None:  # the schema becomes the connection's default (search_path)
            url += f"?options=-csearch_path%3D{schema}"
        return url

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname=dbname, autocommit=True)

    def create_database(self, prefix: str = "t", template: str = "template0") -> str:
        """A new database copied from `template`; returns its name."""
        name = f"{prefix}_{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(
                sql.Identifier(name), sql.Identifier(template)))
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def fresh_schema(self, prefix: str = "t") -> str:
        """A new empty schema in the shared test database; returns a URL whose default schema it is.

        Creating a schema takes milliseconds where CREATE DATABASE takes ~0.2 s,
        and each test still sees an empty database of its own.
        """
        if self.shared_db is None:
            self.shared_db = self.create_database("usagebot_test")
        name = f"{prefix}_{next(self._counter)}"
        with self._admin(self.shared_db) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return self.url(self.shared_db, schema=name)

    def drop_schema(self, url: str) -> None:
        """Drop the schema of a fresh_schema() URL (left for the final cleanup if still locked)."""
        schema = url.rsplit("%3D", 1)[1]
        with self._admin(self.shared_db or "postgres") as conn:
            conn.execute("SET lock_timeout = '5s'")
            try:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            except psycopg.errors.LockNotAvailable:
                pass  # a test leaked a connection; the whole cluster is deleted at the end anyway


def start_server() -> PgServer:
    """Start a throwaway server (raises PgUnavailable when the binaries are missing)."""
    bindir = find_bindir()
    as_user = None
    if os.geteuid() == 0:
        as_user = _ensure_system_user().pw_name
    root = Path(tempfile.mkdtemp(prefix="usagebot-pg-"))
    server = PgServer(bindir=bindir, root=root, as_user=as_user)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
