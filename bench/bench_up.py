"""Start-up time of `sigmabatch up` on the embedded servers, against its parts measured in the
same run.

    .venv/bin/python -m bench.bench_up [--repeat N]

Cold = a fresh data dir (initdb, empty JetStream store); warm = the same data dir again.
Baseline: the serial floor of what `up` must do before /readyz can answer: start nats-server,
initdb + start PostgreSQL, migrate, and import the API process's code. The difference is the
supervisor's own overhead plus the four services starting side by side on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from sigmabatch.embedded import EmbeddedNats, EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    clean["PYTHONPATH"] = str(REPO_ROOT)
    return clean


def timed(function) -> tuple[float, object]:
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def baseline(work: Path) -> dict[str, float]:
    from libs.common.migrate import upgrade

    figures: dict[str, float] = {}
    nats = EmbeddedNats(work / "nats")
    figures["nats-server start"], _ = timed(nats.start)
    nats.stop()
    postgres = EmbeddedPostgres(work / "pg")
    figures["PostgreSQL initdb + start"], url = timed(postgres.start)
    figures["migrate (alembic upgrade head)"], _ = timed(lambda: upgrade(str(url)))
    postgres.stop()
    figures["PostgreSQL restart (warm)"], _ = timed(postgres.start)
    postgres.stop()
    figures["import the API process (python -c)"], _ = timed(
        lambda: subprocess.run(
            [sys.executable, "-c", "import services.status_api.app"], env=env(), check=True
        )
    )
    return figures


def up_to_ready(data_dir: Path) -> float:
    """Seconds from spawning `sigmabatch up` to /readyz 200; then a clean stop."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sigmabatch.cli", "up", "--data-dir", str(data_dir), "--port", "0"],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sigmabatch up exited with {process.returncode}")
            try:
                runtime = json.loads((data_dir / "runtime.json").read_text())
                if runtime.get("api_url"):
                    response = httpx.get(runtime["api_url"] + "/readyz", timeout=2)
                    if response.status_code == 200:
                        return time.perf_counter() - began
            except (FileNotFoundError, json.JSONDecodeError, httpx.HTTPError):
                pass
            if time.perf_counter() - began > 120:
                raise TimeoutError("no /readyz 200 within 120 s")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    floor: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sigmabatch-bench-") as tmp:
        for index in range(args.repeat):
            floor.append(baseline(Path(tmp) / f"baseline-{index}"))
            data_dir = Path(tmp) / f"up-{index}"
            cold.append(up_to_ready(data_dir))
            warm.append(up_to_ready(data_dir))
    load = os.getloadavg()[0]
    print(
        f"sigmabatch up to /readyz 200 ({args.repeat} run(s), load average {load:.1f}, "
        f"{os.cpu_count()} CPUs)"
    )
    print("  baseline, measured in the same run (median s):")
    cold_floor = 0.0
    for name in floor[0]:
        value = statistics.median(f[name] for f in floor)
        print(f"    {name:<40} {value:6.2f}")
        if name != "PostgreSQL restart (warm)":
            cold_floor += value
    print(f"    {'serial floor, cold':<40} {cold_floor:6.2f}")
    print("  sigmabatch up (median s):")
    print(
        f"    {'cold (fresh data dir)':<40} {statistics.median(cold):6.2f}  "
        f"= {statistics.median(cold) / cold_floor:.2f}x the serial floor"
    )
    print(f"    {'warm (same data dir)':<40} {statistics.median(warm):6.2f}")
    print(
        "  goal: /readyz within 30 s of the first command:", "met" if max(cold) < 30 else "NOT met"
    )


if __name__ == "__main__":
    main()
