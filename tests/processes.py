"""Services as real processes, for tests about restarts, crashes and replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """`python -m services.<name>` with the test's environment; its log goes to a file."""

    # What each process logs once it serves (the API logs uvicorn's line).
    READY_LINES = {"status_api": "Application startup complete"}

    def __init__(self, name: str, env: dict[str, str], *, replica: int = 0) -> None:
        self.name = name
        self.env = env
        self.replica = replica
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-{replica}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 90.0) -> ServiceProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_ready:
            try:
                self.wait_for_log(self.READY_LINES.get(self.name, " ready"), timeout=timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, *, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name}: no {needle!r} in log after {timeout}s:\n{self.log()[-4000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: the crash case (no cleanup, no nak)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: the graceful case; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if hasattr(self, "_log"):
            self._log.close()
