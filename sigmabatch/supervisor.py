"""`sigmabatch up`: the whole system on one machine, supervised.

Starts the embedded servers where no URL is configured, migrates, runs the four services as
child processes, restarts a child that dies (with backoff), writes `runtime.json` once the
API answers `/readyz`, and on Ctrl-C/SIGTERM stops the services, then NATS, then PostgreSQL.

No orphans: each child runs in its own process group (so a stop reaches anything it spawned)
and gets SIGTERM from the kernel if the supervisor dies without cleaning up (Linux
parent-death signal). A second `up` on the same data dir is refused while the first holds the
data dir's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from sigmabatch.embedded import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    die_with_parent,
    free_port,
)

log = logging.getLogger("sigmabatch.up")

SERVICES: tuple[str, ...] = ("symbol_batch", "portfolio_refresh", "onboarding", "status_api")
API_SERVICE = "status_api"
RUNTIME_FILE = "runtime.json"
LOCK_FILE = "supervisor.lock"

BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
STABLE_AFTER_SECONDS = 30.0  # a child that ran this long starts its backoff afresh
STOP_GRACE_SECONDS = 40.0  # services finish the message in hand (AckWait 30 s) before this


class AlreadyRunning(RuntimeError):
    """Another supervisor owns this data dir."""

    def __init__(self, data_dir: Path, runtime: dict[str, Any] | None) -> None:
        self.data_dir = data_dir
        self.runtime = runtime or {}
        pid = self.runtime.get("pid", "?")
        api = self.runtime.get("api_url") or "(API not ready yet)"
        super().__init__(
            f"sigmabatch is already running on {data_dir} (supervisor pid {pid}, API {api}). "
            f"Stop it first (Ctrl-C in its terminal, or `kill {pid}`), or use another --data-dir."
        )


class PortInUse(RuntimeError):
    """The API port asked for is taken."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def restart_delay(consecutive_failures: int) -> float:
    """Exponential backoff: 0.5 s, 1 s, 2 s, ... capped at 30 s."""
    exponent = max(consecutive_failures - 1, 0)
    return min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2**exponent)


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data_dir) / RUNTIME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def running_runtime(data_dir: Path) -> dict[str, Any] | None:
    """runtime.json of a live supervisor on `data_dir`, else None (a stale file is ignored)."""
    runtime = read_runtime(data_dir)
    if runtime is None:
        return None
    pid = runtime.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return None
    with contextlib.suppress(psutil.Error):
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and _lock_is_held(data_dir):
            return runtime
    return None


def _lock_is_held(data_dir: Path) -> bool:
    path = Path(data_dir) / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def available_services(names: Sequence[str] = SERVICES) -> list[str]:
    """The services whose `python -m services.<name>` entry point exists in this install."""
    return [name for name in names if importlib.util.find_spec(f"services.{name}.__main__")]


def _project_root() -> Path:
    spec = importlib.util.find_spec("services")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))).parent


@dataclass
class Child:
    """One supervised service process (its own process group, log file in the data dir)."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    _log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def spawn(self) -> None:
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.name}",
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, SIGKILL what is left after `grace` seconds."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s: killing it", self.name, grace)
        self.signal_group(signal.SIGKILL)  # also reaps any grandchild left in the group
        returncode = await self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return returncode


@dataclass
class Supervisor:
    """The composition root of a local deployment (used by `up` and `demo`)."""

    data_dir: Path
    api_port: int = 0
    services: Sequence[str] = SERVICES
    stop_grace: float = STOP_GRACE_SECONDS
    extra_env: dict[str, str] = field(default_factory=dict)
    # Embedded NATS nodes: 1 = one server; 3 = a cluster on loopback with R3 streams.
    nats_nodes: int = 1
    nats: EmbeddedNats | EmbeddedNatsCluster | None = None
    postgres: EmbeddedPostgres | None = None
    nats_url: str = ""
    stream_replicas: int = 1
    database_url: str = ""
    api_url: str | None = None
    children: dict[str, Child] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    _lock_handle: IO[str] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _threads: list[asyncio.Task[Any]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    # -- start --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Own the data dir, or raise AlreadyRunning."""
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.data_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(self.data_dir, read_runtime(self.data_dir)) from None
        self._lock_handle = handle
        self._stop_leftover_children()
        (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)

    def _stop_leftover_children(self) -> None:
        """Services of a supervisor that died by kill -9 (normally gone by parent-death signal)."""
        runtime = read_runtime(self.data_dir) or {}
        for name, pid in (runtime.get("pids", {}).get("services") or {}).items():
            with contextlib.suppress(psutil.Error, TypeError):
                process = psutil.Process(pid)
                if f"services.{name}" in " ".join(process.cmdline()):
                    log.warning("stopping %s left from a previous run (pid %s)", name, pid)
                    os.killpg(pid, signal.SIGKILL)

    async def start(self) -> None:
        """Servers, migrations, services; returns once the API is ready (or no API runs)."""
        from libs.common.config import get_settings

        settings = get_settings()
        self.started_at = time.monotonic()
        if self._lock_handle is None:
            self.acquire()
        if self.api_port == 0:
            self.api_port = free_port()
        elif not port_is_free(self.api_port):
            raise PortInUse(
                f"port {self.api_port} is already in use on 127.0.0.1: pass --port 0 for a free "
                "port, or another --port"
            )
        postgres_start = None
        if settings.database_url:
            self.database_url = settings.database_url
        else:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
            postgres_start = self._in_thread(self.postgres.start)
        self.stream_replicas = settings.stream_replicas
        if settings.nats_url:
            self.nats_url = settings.nats_url
            if self.nats_nodes > 1:
                log.warning("NATS_URL is set: --nats-nodes %d ignored", self.nats_nodes)
        else:
            # In this thread: the parent-death signal is tied to the thread that forks.
            if self.nats_nodes > 1:
                self.nats = EmbeddedNatsCluster(self.data_dir / "nats-cluster", self.nats_nodes)
                # R3 (JetStream's most) on 3+ nodes: one node lost loses no message.
                self.stream_replicas = min(self.nats_nodes, 3)
            else:
                self.nats = EmbeddedNats(self.data_dir / "nats")
            self.nats_url = self.nats.start()
        # Import the migration code (alembic, the models) while PostgreSQL initialises.
        await self._in_thread(importlib.import_module, "libs.common.models")
        await self._in_thread(importlib.import_module, "libs.common.migrate")
        if postgres_start is not None:
            self.database_url = await postgres_start
        log.info("NATS %s, PostgreSQL %s", self.nats_url, _without_password(self.database_url))

        from libs.common.migrate import upgrade

        await self._in_thread(upgrade, self.database_url)
        log.info("database migrated")

        names = available_services(self.services)
        missing = sorted(set(self.services) - set(names))
        if missing:
            log.warning("not in this install, not started: %s", ", ".join(missing))
        logs_dir = self.data_dir / "logs"
        logs_dir.mkdir(exist_ok=True)
        env = self._child_env(settings.bus_prefix)
        for name in names:
            child = Child(name, env, logs_dir / f"{name}.log")
            self.children[name] = child
            await child.spawn()
            log.info("started %s (pid %s, log %s)", name, child.pid, child.log_path)
            self._tasks.append(asyncio.create_task(self._supervise(child)))
        self._write_runtime()
        if API_SERVICE in self.children:
            await self._wait_ready(f"http://127.0.0.1:{self.api_port}")
        self.ready_seconds = time.monotonic() - self.started_at
        self._write_runtime()

    def _in_thread(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        """Blocking work in a thread; a cancelled start still lets it finish before `stop`
        tears down (a PostgreSQL coming up behind our back would be left running)."""
        task = asyncio.ensure_future(asyncio.to_thread(function, *args))
        self._threads.append(task)
        return asyncio.shield(task)

    def _child_env(self, bus_prefix: str) -> dict[str, str]:
        env = dict(os.environ)
        root = str(_project_root())
        pythonpath = env.get("PYTHONPATH")
        env.update(
            DATABASE_URL=self.database_url,
            NATS_URL=self.nats_url,
            SIGMABATCH_STREAM_REPLICAS=str(self.stream_replicas),
            API_PORT=str(self.api_port),
            API_HOST="127.0.0.1",
            SIGMABATCH_DATA_DIR=str(self.data_dir),
            SIGMABATCH_BUS_PREFIX=bus_prefix,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=f"{root}{os.pathsep}{pythonpath}" if pythonpath else root,
        )
        env.update(self.extra_env)
        return env

    async def _wait_ready(self, api_url: str, within_seconds: float = 120.0) -> None:
        deadline = time.monotonic() + within_seconds
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline and not self._stopping.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{api_url}/readyz")).status_code == 200:
                        self.api_url = api_url
                        return
                await asyncio.sleep(0.1)
        if not self._stopping.is_set():
            raise TimeoutError(
                f"the API did not answer /readyz within {within_seconds:.0f} s; see "
                f"{self.children[API_SERVICE].log_path}"
            )

    # -- supervision --------------------------------------------------------------------

    async def _supervise(self, child: Child) -> None:
        failures = 0
        while True:
            assert child.process is not None
            returncode = await child.process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - child.started_at
            failures = 1 if ran >= STABLE_AFTER_SECONDS else failures + 1
            delay = restart_delay(failures)
            log.warning(
                "%s (pid %s) exited with code %s after %.1f s; restarting in %.1f s\n%s",
                child.name,
                child.pid,
                returncode,
                ran,
                delay,
                child.log_tail(),
            )
            child.signal_group(signal.SIGKILL)  # anything it left behind in its group
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            await child.spawn()
            if self._stopping.is_set():  # a stop began while it was spawning
                await child.stop(self.stop_grace)
                return
            child.restarts += 1
            log.info("restarted %s (pid %s, restart #%d)", child.name, child.pid, child.restarts)
            self._write_runtime()

    def _write_runtime(self) -> None:
        runtime = {
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "api_url": self.api_url,
            "nats_url": self.nats_url,
            "nats_nodes": self._nats_nodes(),
            "stream_replicas": self.stream_replicas,
            "database_url": self.database_url,
            "embedded": {"nats": self.nats is not None, "postgres": self.postgres is not None},
            "pids": {
                "supervisor": os.getpid(),
                "nats": self.nats.pid if isinstance(self.nats, EmbeddedNats) else None,
                "postgres": self.postgres.pid if self.postgres else None,
                "services": {name: child.pid for name, child in self.children.items()},
            },
            "restarts": {name: child.restarts for name, child in self.children.items()},
            "ready_seconds": self.ready_seconds,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        path = self.data_dir / RUNTIME_FILE
        temporary = path.with_suffix(".json.tmp")
        temporary.unlink(missing_ok=True)
        # 0600: the database URL carries the embedded PostgreSQL's password.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(json.dumps(runtime, indent=2) + "\n")
        temporary.replace(path)  # readers never see half a file

    def _nats_nodes(self) -> list[dict[str, object]]:
        """Each NATS node's name, URL and pid (pid None: not ours to know)."""
        if isinstance(self.nats, EmbeddedNatsCluster):
            return self.nats.describe()
        if isinstance(self.nats, EmbeddedNats):
            return [{"name": self.nats.server_name, "url": self.nats_url, "pid": self.nats.pid}]
        from libs.common.bus import server_urls

        return [{"name": None, "url": url, "pid": None} for url in server_urls(self.nats_url)]

    # -- stop ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Services first (they finish the message in hand), then NATS, then PostgreSQL."""
        self._stopping.set()
        await asyncio.gather(*self._threads, return_exceptions=True)
        if self.children:
            log.info("stopping services: %s", ", ".join(self.children))
        await asyncio.gather(*(child.stop(self.stop_grace) for child in self.children.values()))
        # The supervising tasks see the stop and return (one caught mid-restart stops the
        # child it just spawned); cancel only what is still stuck after that.
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=self.stop_grace + 10)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close_servers()

    def close_servers(self) -> None:
        """Stop the embedded servers and release the data dir (safe to call twice)."""
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        if self._lock_handle is not None:
            (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def kill_now(self) -> None:
        """Second Ctrl-C: no grace."""
        for child in self.children.values():
            child.signal_group(signal.SIGKILL)


def install_stop_signals(supervisor: Supervisor) -> None:
    """First SIGINT/SIGTERM: orderly stop; a second one: kill the services at once."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if supervisor._stopping.is_set():
            log.warning("%s again: killing the services now", sig.name)
            supervisor.kill_now()
        else:
            log.info("%s: stopping", sig.name)
            supervisor.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _without_password(url: str) -> str:
    """The URL to print: its password masked (runtime.json, 0600, has the real one)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unprintable URL)"


def sigmabatch_command() -> str:
    """How to run this very `sigmabatch` as shown, without an activated venv."""
    script = Path(sys.executable).parent / "sigmabatch"
    return str(script) if script.exists() else f"{sys.executable} -m sigmabatch.cli"


def local_console_user() -> str:
    """The user `up` makes a console token for: the login name, else `admin` ($USER may be
    unset, e.g. in a container)."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "admin"


async def console_token(database_url: str, username: str) -> str | None:
    """A fresh admin token for local use of the console (None if it cannot be made: the
    system still runs, and the printed command makes one)."""
    from libs.common.auth import create_user_token
    from libs.common.db import session_scope

    try:
        async with session_scope(database_url) as session:
            return await create_user_token(session, username, admin=True,
                                           name="console (sigmabatch up)")
    except Exception as exc:
        log.warning("could not create a console token: %s", exc)
        return None


def describe(supervisor: Supervisor, token: str | None = None, user: str | None = None) -> str:
    user = user or local_console_user()
    command = (f"{sigmabatch_command()} token create --user {user} --admin "
               f"--data-dir {supervisor.data_dir}")
    lines = [
        f"sigmabatch is up in {supervisor.ready_seconds:.1f} s  (data dir {supervisor.data_dir})",
        f"  console     {supervisor.api_url + '/' if supervisor.api_url else '(status_api not installed)'}"
        + ("   API docs: " + supervisor.api_url + "/docs" if supervisor.api_url else ""),
        f"  NATS        {supervisor.nats_url}"
        + (f"   (R{supervisor.stream_replicas} streams)" if supervisor.stream_replicas > 1 else ""),
        f"  PostgreSQL  {_without_password(supervisor.database_url)}",
        f"  services    {', '.join(supervisor.children) or '(none)'}   logs: {supervisor.data_dir / 'logs'}",
    ]
    if token:
        lines.append(f"  token       {token}   (user {user}, admin; sign in to the console "
                     "with it, or send it as `Authorization: Bearer …`)")
    lines += [
        f"  more tokens {command}",
        "  Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


async def run_up(data_dir: Path, api_port: int, nats_nodes: int = 1) -> int:
    """`sigmabatch up`: run until Ctrl-C/SIGTERM; exit code 0 on a clean stop."""
    supervisor = Supervisor(data_dir=data_dir, api_port=api_port, nats_nodes=nats_nodes)
    supervisor.acquire()  # AlreadyRunning leaves the running system alone
    install_stop_signals(supervisor)
    try:
        start = asyncio.create_task(supervisor.start())
        stopped = asyncio.create_task(supervisor.wait_stopped())
        await asyncio.wait([start, stopped], return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()  # raises a start failure
            token = await console_token(supervisor.database_url, local_console_user())
            print(describe(supervisor, token), flush=True)
            await stopped
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
    finally:
        from libs.common.db import dispose_engines

        await dispose_engines()
        await supervisor.stop()
    log.info("stopped")
    return 0
