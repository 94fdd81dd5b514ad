"""Clerk session tokens (the SigmaSight frontend's sign-in) through the real app on a real
PostgreSQL: an RSA key pair made here stands in for the Clerk instance's, and PyJWT signs the
tokens as Clerk would (RS256, iss/sub/azp/exp/nbf)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from libs.common.auth import create_user_token
from libs.common.clerk import ClerkVerifier
from libs.common.config import Settings
from libs.common.db import session_scope
from tests.test_api_helpers import api_client, csv_bytes, seed_known_symbols, stock_rows, token_for
from tests.test_frontend_onboarding import CREATE, form

ISSUER = "https://clerk.example.test"
ORIGIN = "http://localhost:3005"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def clerk_token(sub: str | None, key: Any = KEY, algorithm: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": sub, "azp": ORIGIN, "sid": "sess_1", "iat": now,
               "nbf": now - 5, "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key,
                      algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_clerk(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(update={
        "clerk_jwt_public_key": PUBLIC_PEM, "clerk_issuer": ISSUER,
        "clerk_authorized_parties": [ORIGIN], **extra})


async def test_a_clerk_user_signs_in_uploads_and_sees_only_their_own(settings) -> None:
    settings = with_clerk(settings)
    await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"], days=10)
    alice, bob = bearer(clerk_token("user_alice")), bearer(clerk_token("user_bob"))
    own_token = await token_for(settings.database_url, "carol")
    async with api_client(settings) as client:
        me = await client.get("/api/v1/me", headers=alice)
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "clerk:user_alice" and me.json()["is_admin"] is False
        created = await client.post(CREATE, headers=alice,
                                    **form(csv_bytes(*stock_rows(["AAPL", "MSFT"]))))
        assert created.status_code == 201, created.text
        portfolio_id = created.json()["portfolio_id"]
        assert (await client.get(f"/api/v1/portfolios/{portfolio_id}",
                                 headers=alice)).status_code == 200
        # bob's first request fails (404, its session rolled back): his user stays created.
        assert (await client.get(f"/api/v1/portfolios/{portfolio_id}",
                                 headers=bob)).status_code == 404
        assert [p["portfolio_id"] for p in (await client.get(
            "/api/v1/portfolios", headers=bob)).json()] == []
        # Never an admin through Clerk; sigmabatch's own tokens keep working alongside.
        assert (await client.get("/api/v1/admin/bus", headers=alice)).status_code == 403
        assert (await client.get("/api/v1/me", headers=own_token)).json()["username"] == "carol"
        # Concurrent first requests of a new Clerk user converge on one user.
        dave = [bearer(clerk_token("user_dave", jti=str(i))) for i in range(6)]
        answers = await asyncio.gather(*(client.get("/api/v1/me", headers=h) for h in dave))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["user_id"] for a in answers}) == 1
    async with session_scope(settings.database_url) as session:
        owner = (await session.execute(text(
            "SELECT u.clerk_user_id, u.username FROM portfolios p JOIN users u ON u.id = p.user_id "
            "WHERE p.id = CAST(:id AS uuid)"), {"id": portfolio_id})).one()
        users = dict((await session.execute(text(
            "SELECT clerk_user_id, count(*) FROM users WHERE clerk_user_id IS NOT NULL "
            "GROUP BY clerk_user_id"))).all())
    assert tuple(owner) == ("user_alice", "clerk:user_alice")
    assert users == {"user_alice": 1, "user_bob": 1, "user_dave": 1}


def _unsigned(sub: str) -> str:
    """An `alg: none` token, built by hand (PyJWT would refuse to verify it anyway)."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return (part({"alg": "none", "typ": "JWT"}) + "."
            + part({"iss": ISSUER, "sub": sub, "azp": ORIGIN, "exp": now + 60}) + ".")


async def test_bad_clerk_tokens_are_401_with_the_reason(settings) -> None:
    settings = with_clerk(settings)
    now = int(time.time())
    valid = clerk_token("user_eve")
    header, payload, signature = valid.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["sub"] = "user_alice"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    cases = {
        "expired": (clerk_token("user_eve", exp=now - 60), "Clerk token expired"),
        "not yet valid": (clerk_token("user_eve", nbf=now + 600), "not valid yet"),
        "wrong issuer": (clerk_token("user_eve", iss="https://evil.example"), "wrong issuer"),
        "wrong azp": (clerk_token("user_eve", azp="https://evil.example"), "(azp)"),
        "HS256": (clerk_token("user_eve", key="a-shared-secret-of-32-bytes-long!",
                              algorithm="HS256"), "must be signed with RS256"),
        "alg none": (_unsigned("user_eve"), "must be signed with RS256"),
        "other key": (clerk_token("user_eve", key=OTHER_KEY), "signature does not verify"),
        "tampered": (f"{header}.{forged_payload}.{signature}", "signature does not verify"),
        "no sub": (clerk_token(None), "'sub'"),
        "garbage": ("a.b.c", "Invalid Clerk token"),
    }
    async with api_client(settings) as client:
        assert (await client.get("/api/v1/me", headers=bearer(valid))).status_code == 200
        for case, (token, reason) in cases.items():
            answer = await client.get("/api/v1/portfolios", headers=bearer(token))
            assert answer.status_code == 401, case
            assert reason in answer.json()["detail"], (case, answer.json())
            assert answer.headers["www-authenticate"] == "Bearer", case
        # A body-carrying request is refused by the body guard, before its body is read.
        upload = await client.post(CREATE, headers=bearer(cases["expired"][0]),
                                   **form(csv_bytes(*stock_rows(["AAPL"]))))
        assert upload.status_code == 401 and "expired" in upload.json()["detail"]
    async with session_scope(settings.database_url) as session:
        clerk_users = (await session.execute(text(
            "SELECT clerk_user_id FROM users WHERE clerk_user_id IS NOT NULL"))).scalars().all()
    assert clerk_users == ["user_eve"]  # only the valid token made a user


async def test_without_a_key_clerk_tokens_are_refused_and_own_tokens_work(settings) -> None:
    assert settings.clerk_jwt_public_key is None
    own = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        refused = await client.get("/api/v1/me", headers=bearer(clerk_token("user_alice")))
        assert refused.status_code == 401
        assert refused.json()["detail"].startswith("Clerk tokens are not configured")
        assert (await client.get("/api/v1/me", headers=own)).status_code == 200


async def test_clerk_usernames_are_reserved_for_clerk_users(database_url) -> None:
    async with session_scope(database_url) as session:
        with pytest.raises(ValueError, match="reserved"):
            await create_user_token(session, "clerk:user_alice", admin=True)


def test_verifier_settings(tmp_path) -> None:
    base = Settings(DATABASE_URL="postgresql://x/y")
    assert ClerkVerifier.from_settings(base) is None
    with pytest.raises(ValueError, match="CLERK_ISSUER"):
        ClerkVerifier.from_settings(base.model_copy(update={"clerk_jwt_public_key": PUBLIC_PEM}))
    with pytest.raises(ValueError, match="not a PEM public key"):
        ClerkVerifier.from_settings(base.model_copy(update={
            "clerk_jwt_public_key": "nonsense", "clerk_issuer": ISSUER}))
    key_file = tmp_path / "clerk.pem"
    key_file.write_text(PUBLIC_PEM)
    from_file = ClerkVerifier.from_settings(base.model_copy(update={
        "clerk_jwt_public_key_file": key_file, "clerk_issuer": ISSUER}))
    one_line = ClerkVerifier.from_settings(base.model_copy(update={  # newlines as literal \n
        "clerk_jwt_public_key": PUBLIC_PEM.replace("\n", "\\n"), "clerk_issuer": ISSUER}))
    assert from_file is not None and one_line is not None
    assert from_file.verify(clerk_token("user_x"))["sub"] == "user_x"
    assert not from_file.authorized_parties  # azp unchecked unless configured
    assert one_line.verify(clerk_token("user_x", azp="anything"))["sub"] == "user_x"
    parties = Settings(DATABASE_URL="postgresql://x/y",
                       CLERK_AUTHORIZED_PARTIES=f"{ORIGIN}, https://app.example")
    assert parties.clerk_authorized_parties == [ORIGIN, "https://app.example"]
