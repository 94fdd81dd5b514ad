"""Clerk session tokens: the SigmaSight frontend's sign-in, verified offline (issue 16).

The frontend sends its Clerk session JWT as the bearer token ahead of any sigmabatch token.
A Clerk session token is RS256-signed by the Clerk instance's key, so it is verified here with
that instance's PEM public key (from its dashboard or JWKS), no network call per request:
signature (RS256 only: `none`, HS256 and the rest are refused, so a public key can never be
used as an HMAC secret), `iss` (required, must equal `CLERK_ISSUER`), `exp`/`nbf` with a few
seconds of leeway for clock skew, and `azp` when `CLERK_AUTHORIZED_PARTIES` is set.

A verified token's `sub` (the Clerk user id) maps to one sigmabatch user, created on first
sight (`users.clerk_user_id`, unique: concurrent first requests converge on one row), named
`clerk:<sub>`; a Clerk user is never an admin. With no key configured, JWTs are refused with
a 401 saying so. sigmabatch's own opaque tokens (`sb_…`, no dots) never reach this module.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import CLERK_USERNAME_PREFIX, Caller, Resolved, TokenRejected
from libs.common.config import Settings
from libs.common.db import session_scope

LEEWAY_SECONDS = 10
NOT_CONFIGURED = ("Clerk tokens are not configured on this server: set CLERK_JWT_PUBLIC_KEY "
                  "and CLERK_ISSUER, or send a sigmabatch token (`sigmabatch token create`).")
MAX_SUB_LENGTH = 190  # users.username is 200 characters, prefix included


def looks_like_jwt(token: str) -> bool:
    """A compact JWS has three dot-separated parts; sigmabatch's tokens have no dot."""
    return token.count(".") == 2


@dataclass(frozen=True, slots=True)
class ClerkVerifier:
    public_key: RSAPublicKey
    issuer: str
    authorized_parties: frozenset[str]
    leeway: float = LEEWAY_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> ClerkVerifier | None:
        """None when no key is configured; ValueError (at start-up) for a half or bad setup."""
        pem = settings.clerk_jwt_public_key
        if not pem and settings.clerk_jwt_public_key_file is not None:
            pem = settings.clerk_jwt_public_key_file.read_text()
        if not pem:
            return None
        if not settings.clerk_issuer:
            raise ValueError("CLERK_JWT_PUBLIC_KEY is set but CLERK_ISSUER is not: set it to the "
                             "Clerk instance's issuer URL (e.g. https://your-app.clerk.accounts.dev)")
        try:  # an env var often carries the PEM's newlines as literal "\n"
            key = load_pem_public_key(pem.replace("\\n", "\n").strip().encode())
        except ValueError as exc:
            raise ValueError(f"CLERK_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
        if not isinstance(key, RSAPublicKey):
            raise ValueError("CLERK_JWT_PUBLIC_KEY must be an RSA public key (Clerk signs RS256)")
        return cls(key, settings.clerk_issuer, frozenset(settings.clerk_authorized_parties))

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or TokenRejected saying why (the 401's message)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.public_key, algorithms=["RS256"], issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenRejected("Clerk token expired: sign in again.") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("Clerk token is not valid yet (nbf).") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"Clerk token has the wrong issuer (expected {self.issuer}).") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected("Clerk token must be signed with RS256.") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("Clerk token signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"Clerk token lacks the '{exc.claim}' claim.") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"Invalid Clerk token: {exc}.") from None
        if self.authorized_parties and claims.get("azp") not in self.authorized_parties:
            raise TokenRejected(f"Clerk token's authorized party (azp) "
                                f"{claims.get('azp')!r} is not allowed here.")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
            raise TokenRejected("Clerk token has an unusable 'sub' claim.")
        return claims


async def ensure_clerk_user(session: AsyncSession, database_url: str,
                            clerk_user_id: str) -> Caller:
    """The sigmabatch user of a Clerk user id, created on first sight (never an admin).

    Read in the request's session; a new user is written in a transaction of its own,
    committed at once: the request's session is rolled back when the route fails (a 404,
    say), and the cached caller must not outlive its row. Concurrent first requests both
    INSERT; the unique `clerk_user_id` makes one take the DO UPDATE branch, so both return
    the same row.
    """
    known = (await session.execute(
        text("SELECT id, username FROM users WHERE clerk_user_id = :c"),
        {"c": clerk_user_id})).first()
    if known is not None:
        return Caller(known.id, known.username, is_admin=False)
    async with session_scope(database_url) as own:
        row = (
            await own.execute(
                text(
                    """
                    INSERT INTO users (id, username, is_admin, clerk_user_id)
                    VALUES (:id, :username, false, :clerk_user_id)
                    ON CONFLICT (clerk_user_id) DO UPDATE
                    SET clerk_user_id = EXCLUDED.clerk_user_id
                    RETURNING id, username
                    """
                ),
                {"id": uuid.uuid4(), "username": CLERK_USERNAME_PREFIX + clerk_user_id,
                 "clerk_user_id": clerk_user_id},
            )
        ).one()
    return Caller(row.id, row.username, is_admin=False)


async def resolve_clerk_token(session: AsyncSession, database_url: str,
                              verifier: ClerkVerifier | None, token: str) -> Resolved:
    """The caller of a Clerk session token (cached by the caller until the token's `exp`)."""
    if verifier is None:
        raise TokenRejected(NOT_CONFIGURED)
    claims = verifier.verify(token)
    caller = await ensure_clerk_user(session, database_url, claims["sub"])
    return Resolved(caller, dt.datetime.fromtimestamp(claims["exp"], dt.UTC))
