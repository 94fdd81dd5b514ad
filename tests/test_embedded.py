"""The embedded servers: start, stop, restart on the same data, and no orphans after kill -9."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from libs.common.db import asyncpg_dsn
from sigmabatch.embedded import EmbeddedNats, EmbeddedPostgres


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _run_owner_then_kill_9(script: str, data_dir: Path) -> int:
    """Run `script` in a Python that prints a server pid, then SIGKILL that Python."""
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.strip().isdigit(), f"owner printed {line!r}"
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    return int(line)


async def test_nats_restart_keeps_jetstream_data(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    assert url.startswith("nats://127.0.0.1:")
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.one", b"payload")
    await client.close()
    server.stop()
    assert server.process is None

    with EmbeddedNats(tmp_path / "nats") as again:
        client = await nats.connect(again.url)
        info = await client.jetstream().stream_info("KEEP")
        await client.close()
    assert info.state.messages == 1


def test_nats_uses_the_requested_port(tmp_path: Path) -> None:
    from sigmabatch.embedded import free_port

    port = free_port()
    with EmbeddedNats(tmp_path, port=port) as server:
        assert server.url == f"nats://127.0.0.1:{port}"


def test_nats_dies_with_its_owner_killed_by_sigkill(tmp_path: Path) -> None:
    nats_pid = _run_owner_then_kill_9(
        """
        import sys, time
        from pathlib import Path
        from sigmabatch.embedded import EmbeddedNats
        server = EmbeddedNats(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """,
        tmp_path,
    )
    assert _wait_gone(nats_pid), "nats-server outlived the Python that started it"
    # and the next start on the same store works
    with EmbeddedNats(tmp_path) as server:
        assert server.process is not None and server.process.poll() is None


async def test_postgres_restart_finds_its_data(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    assert url.startswith("postgresql+asyncpg://") and "/sigmabatch?host=" in url
    connection = await asyncpg.connect(asyncpg_dsn(url))
    await connection.execute("CREATE TABLE kept (value int); INSERT INTO kept VALUES (42)")
    await connection.close()
    first_pid = server.pid
    server.stop()
    assert first_pid is not None and _wait_gone(first_pid)

    with EmbeddedPostgres(tmp_path / "pg") as again:
        connection = await asyncpg.connect(asyncpg_dsn(again.url))
        assert await connection.fetchval("SELECT value FROM kept") == 42
        await connection.close()
        pid = again.pid
    assert pid is not None and _wait_gone(pid)


async def test_postgres_left_by_a_killed_owner_is_reused_then_stopped(tmp_path: Path) -> None:
    postmaster_pid = _run_owner_then_kill_9(
        """
        import sys, time
        from pathlib import Path
        from sigmabatch.embedded import EmbeddedPostgres
        server = EmbeddedPostgres(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """,
        tmp_path,
    )
    assert psutil.pid_exists(postmaster_pid), "PostgreSQL is a daemon: it survives its owner"

    server = EmbeddedPostgres(tmp_path)
    url = server.start()
    assert server.pid == postmaster_pid  # found through postmaster.pid, not started twice
    connection = await asyncpg.connect(asyncpg_dsn(url))
    assert await connection.fetchval("SELECT current_database()") == "sigmabatch"
    await connection.close()
    server.stop()
    assert _wait_gone(postmaster_pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only path: PostgreSQL runs as a system user")
def test_postgres_as_root_runs_as_a_system_user(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as server:
        assert server.pid is not None
        assert psutil.Process(server.pid).username() == "embedded_postgres"


async def test_postgres_asks_for_its_generated_password_behind_a_private_socket_dir(
    tmp_path: Path,
) -> None:
    """Finding 12.8: no `trust` for local users; the socket dir is the server's alone."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    try:
        password_file = tmp_path / "pg" / "password"
        password = password_file.read_text().strip()
        assert len(password) >= 24
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert server.socket_dir is not None
        assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
        assert f"postgres:{password}@" in url

        connection = await asyncpg.connect(asyncpg_dsn(url))
        assert await connection.fetchval("SELECT current_database()") == "sigmabatch"
        await connection.close()
        without_password = url.replace(f":{password}@", "@")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(asyncpg_dsn(without_password), password="wrong")
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientCannotConnectError)):
            await asyncpg.connect(asyncpg_dsn(without_password))
    finally:
        server.stop()

    with EmbeddedPostgres(tmp_path / "pg") as again:  # the next `up` finds it again
        assert again.url == url  # same password, same socket dir
        connection = await asyncpg.connect(asyncpg_dsn(again.url))
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()


async def test_postgres_made_with_trust_is_switched_to_a_password(tmp_path: Path) -> None:
    """A data dir from before passwords (pg_hba `trust`, no password file) gets one."""
    data_dir = tmp_path / "pg"
    with EmbeddedPostgres(data_dir):
        pass
    hba = data_dir / "pgdata" / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    (data_dir / "password").unlink()

    with EmbeddedPostgres(data_dir) as server:
        password = (data_dir / "password").read_text().strip()
        assert "trust" not in hba.read_text()
        connection = await asyncpg.connect(asyncpg_dsn(server.url))
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(asyncpg_dsn(server.url.replace(password, "wrong")))
