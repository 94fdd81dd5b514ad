"""Token expiry, `sigmabatch token list` and `token revoke` (issue 12, finding 9).

The CLI runs as a real process on this test's database; the API is the real app in process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid

from sqlalchemy import text

from libs.common.auth import Caller, TokenCache, create_user_token
from libs.common.db import session_scope
from sigmabatch.cli import main
from tests.test_api_helpers import api_client
from tests.test_cli import REPO_ROOT, sigmabatch_command

PORTFOLIOS = "/api/v1/portfolios"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=database_url, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([*sigmabatch_command(), *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_expire_are_listed_without_secrets_and_revoked(settings) -> None:
    url = settings.database_url
    made = [cli(url, "token", "create", "--user", "alice"),
            cli(url, "token", "create", "--user", "alice", "--expires-days", "0")]
    assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
    alice_90, alice_forever = (m.stdout.strip() for m in made)
    async with session_scope(url) as session:  # the library call behind `token create`
        bob_7 = await create_user_token(session, "bob", False, expires_days=7)

    listed = cli(url, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"active"}
    for secret in (alice_90, alice_forever, bob_7):
        assert secret not in listed.stdout
    async with session_scope(url) as session:
        hashes = (await session.execute(text("SELECT token_hash FROM api_tokens"))).scalars()
        assert not any(h in listed.stdout for h in hashes)
    lifetimes = (
        None if r["expires_at"] is None else
        (dt.datetime.fromisoformat(r["expires_at"])
         - dt.datetime.fromisoformat(r["created_at"])).days
        for r in rows if r["user"] == "alice")
    assert sorted(lifetimes, key=lambda days: -1 if days is None else days) == [None, 90]
    bob_row = next(r for r in rows if r["user"] == "bob")
    table = cli(url, "token", "list", "--user", "bob")
    assert table.returncode == 0 and bob_row["id"] in table.stdout and "alice" not in table.stdout

    # bob's token expires (as if 7 days passed): 401 saying so
    async with session_scope(url) as session:
        await session.execute(text("UPDATE api_tokens SET expires_at = now() - interval '1 s' "
                                   "WHERE id = :id"), {"id": uuid.UUID(bob_row["id"])})
    async with api_client(settings) as client:
        assert (await client.get(PORTFOLIOS, headers=bearer(alice_90))).status_code == 200
        expired = await client.get(PORTFOLIOS, headers=bearer(bob_7))
        assert expired.status_code == 401
        assert expired.json()["detail"].startswith("This token expired on ")
        assert expired.headers["www-authenticate"] == "Bearer"

    # revoke one of alice's by id, then the rest by user
    alice_ids = [r["id"] for r in rows if r["user"] == "alice"]
    one = cli(url, "token", "revoke", alice_ids[0])
    assert one.returncode == 0 and "revoked 1 token(s)" in one.stdout, one.stderr
    rest = cli(url, "token", "revoke", "--user", "alice")
    assert rest.returncode == 0 and "revoked 1 token(s)" in rest.stdout, rest.stderr
    async with api_client(settings) as client:
        for token in (alice_90, alice_forever):
            refused = await client.get(PORTFOLIOS, headers=bearer(token))
            assert refused.status_code == 401
            assert refused.json()["detail"].startswith("This token was revoked on ")
        unknown = await client.get(PORTFOLIOS, headers=bearer("sb_" + "x" * 43))
        assert unknown.status_code == 401 and unknown.json()["detail"] == "Invalid token."
    statuses = {r["id"]: r["status"] for r in json.loads(cli(url, "token", "list", "--json").stdout)}
    assert statuses == {alice_ids[0]: "revoked", alice_ids[1]: "revoked", bob_row["id"]: "expired"}

    # operator typos are errors, not "0 revoked"
    for argv in (["revoke", str(uuid.uuid4())], ["revoke", "--user", "nobody"]):
        wrong = cli(url, "token", *argv)
        assert wrong.returncode == 1 and wrong.stderr.startswith("sigmabatch: "), argv


def test_token_commands_refuse_bad_arguments_before_touching_the_database(capsys) -> None:
    for argv in (["revoke"], ["revoke", "not-an-id"], ["revoke", str(uuid.uuid4()), "--user", "x"],
                 ["create", "--user", "x", "--expires-days", "-1"]):
        assert main(["token", *argv, "--data-dir", "/nonexistent-sigmabatch"]) == 1, argv
        assert capsys.readouterr().err.startswith("sigmabatch: "), argv


def test_the_token_cache_never_outlives_the_token() -> None:
    caller = Caller(uuid.uuid4(), "alice", False)
    cache = TokenCache(ttl=60)
    now = dt.datetime.now(dt.UTC)
    cache.put("sb_gone", caller, now - dt.timedelta(seconds=1))
    cache.put("sb_later", caller, now + dt.timedelta(days=1))
    cache.put("sb_never", caller, None)
    assert cache.get("sb_gone") is None
    assert cache.get("sb_later") == caller and cache.get("sb_never") == caller
