"""The one configuration object of sigmabatch, read from the environment.

Every service, the CLI and the tests read settings through `get_settings()`, so a
deployment changes behaviour with env vars only (12-factor), never with code edits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings; unset URLs mean "use the embedded servers" (see `sigmabatch up`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    # One server, or a cluster as comma-separated URLs (`tls://` where the servers want TLS).
    nats_url: str | None = Field(default=None, alias="NATS_URL")
    # This service's NATS user (deploy/nats/ gives each service its own, with permissions on
    # exactly its subjects): user/password, or a creds file (JWT + nkey seed).
    nats_user: str | None = Field(default=None, alias="NATS_USER")
    nats_password: str | None = Field(default=None, alias="NATS_PASSWORD")
    nats_creds: Path | None = Field(default=None, alias="NATS_CREDS")
    # TLS: the CA that signed the servers' certificates; a client certificate where the
    # servers verify clients; the name to verify when it is not the URL's host.
    nats_tls_ca: Path | None = Field(default=None, alias="NATS_TLS_CA")
    nats_tls_cert: Path | None = Field(default=None, alias="NATS_TLS_CERT")
    nats_tls_key: Path | None = Field(default=None, alias="NATS_TLS_KEY")
    nats_tls_hostname: str | None = Field(default=None, alias="NATS_TLS_HOSTNAME")
    # Replies (JetStream API answers, pulled messages) arrive under this prefix; deploy/nats/
    # lets each service's user subscribe to `_INBOX_<user>.>` only.
    nats_inbox_prefix: str = Field(default="_INBOX", alias="NATS_INBOX_PREFIX")
    market_data_provider: Literal["sample", "yfinance"] = Field(
        default="sample", alias="MARKET_DATA_PROVIDER"
    )
    data_dir: Path = Field(default=Path(".sigmabatch"), alias="SIGMABATCH_DATA_DIR")
    api_host: str = Field(default="127.0.0.1", alias="API_HOST")
    api_port: int = Field(default=8000, alias="API_PORT")
    # Prefix for every stream, consumer and subject: isolates environments (and tests)
    # sharing one NATS account.
    bus_prefix: str = Field(default="", alias="SIGMABATCH_BUS_PREFIX")
    # Auth: tokens are random; only their SHA-256 is stored.
    auth_disabled: bool = Field(default=False, alias="SIGMABATCH_AUTH_DISABLED")
    # Lifetime of a new token (`token create --expires-days` overrides; 0 = never expires).
    token_expires_days: int = Field(default=90, ge=0, alias="SIGMABATCH_TOKEN_EXPIRES_DAYS")
    # Clerk session tokens (the SigmaSight frontend's sign-in, libs/common/clerk.py): the Clerk
    # instance's PEM public key (or a file holding it) and issuer URL; no key = JWTs refused.
    clerk_jwt_public_key: str | None = Field(default=None, alias="CLERK_JWT_PUBLIC_KEY")
    clerk_jwt_public_key_file: Path | None = Field(default=None, alias="CLERK_JWT_PUBLIC_KEY_FILE")
    clerk_issuer: str | None = Field(default=None, alias="CLERK_ISSUER")
    # Allowed `azp` claims (the frontend's origins), comma-separated; empty = not checked.
    clerk_authorized_parties: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="CLERK_AUTHORIZED_PARTIES")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="CORS_ORIGINS")
    # Jobs
    job_stale_after_seconds: float = Field(default=120.0, alias="SIGMABATCH_JOB_STALE_SECONDS")
    job_heartbeat_seconds: float = Field(default=10.0, alias="SIGMABATCH_JOB_HEARTBEAT_SECONDS")
    # Bus
    ack_wait_seconds: float = Field(default=30.0, alias="SIGMABATCH_ACK_WAIT_SECONDS")
    max_deliver: int = Field(default=5, alias="SIGMABATCH_MAX_DELIVER")
    duplicate_window_seconds: float = Field(default=3600.0, alias="SIGMABATCH_DUPLICATE_WINDOW")
    event_retention_days: int = Field(default=14, alias="SIGMABATCH_EVENT_RETENTION_DAYS")
    # JetStream replicas of both streams: 3 on a 3-node NATS cluster (the services apply it at
    # start-up, so an operator's `nats stream edit --replicas` is not undone by a restart).
    stream_replicas: int = Field(default=1, alias="SIGMABATCH_STREAM_REPLICAS")
    # Symbol batch
    max_backfill_days: int = Field(default=30, alias="SIGMABATCH_MAX_BACKFILL_DAYS")
    settle_delay_minutes: int = Field(default=60, alias="SIGMABATCH_SETTLE_DELAY_MINUTES")
    provider_rate_per_second: float = Field(default=5.0, alias="SIGMABATCH_PROVIDER_RATE")
    # One provider call (a chunk of symbols) longer than this is abandoned and the chunk is
    # retried symbol by symbol.
    provider_timeout_seconds: float = Field(default=120.0, alias="SIGMABATCH_PROVIDER_TIMEOUT")
    # Sample provider only: N deterministic synthetic tickers (SY0001..) added to the universe
    # symbol_batch processes, for production-size runs offline (bench/bench_cycle.py).
    sample_universe: int = Field(default=0, ge=0, le=9999, alias="SIGMABATCH_SAMPLE_UNIVERSE")
    # Chaos testing only (see libs/common/market_data/faults.py).
    provider_faults: str = Field(default="", alias="SIGMABATCH_PROVIDER_FAULTS")
    provider_latency_seconds: float = Field(default=0.0, ge=0, alias="SIGMABATCH_PROVIDER_LATENCY")
    provider_call_log: Path | None = Field(default=None, alias="SIGMABATCH_PROVIDER_CALL_LOG")
    # Onboarding's vendor calls (libs/common/market_data/gate.py): at most this many symbols
    # per coalesced call (1 = one call per symbol); SIGMABATCH_PROVIDER_RATE calls per second
    # across every replica (a token bucket in a NATS KV bucket; 0 = unlimited); the circuit
    # opens after this many consecutive failed calls and probes again after the cool-down.
    provider_batch_max: int = Field(default=50, ge=1, alias="SIGMABATCH_PROVIDER_BATCH_MAX")
    provider_breaker_failures: int = Field(
        default=5, ge=1, alias="SIGMABATCH_PROVIDER_BREAKER_FAILURES")
    provider_breaker_cooldown_seconds: float = Field(
        default=30.0, gt=0, alias="SIGMABATCH_PROVIDER_BREAKER_COOLDOWN")
    # Onboarding: per user, symbols new to the universe one upload / 24 hours may ask for
    # (0 = no limit): 422 past the first, 429 with Retry-After past the second.
    max_new_symbols_per_upload: int = Field(
        default=200, ge=0, alias="SIGMABATCH_MAX_NEW_SYMBOLS_PER_UPLOAD")
    max_new_symbols_per_day: int = Field(
        default=1000, ge=0, alias="SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY")
    # Portfolio refresh: portfolios per fan-out chunk (one transaction each); the risk-free
    # rate of Black-Scholes model prices for options without a quote.
    refresh_chunk_size: int = Field(default=500, alias="SIGMABATCH_REFRESH_CHUNK_SIZE")
    risk_free_rate: float = Field(default=0.04, alias="SIGMABATCH_RISK_FREE_RATE")
    # Service liveness endpoint; 0 = pick a free port, -1 = disabled.
    health_port: int = Field(default=-1, alias="SIGMABATCH_HEALTH_PORT")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")

    @field_validator("cors_origins", "clerk_authorized_parties", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "DATABASE_URL is not set: run the service under `sigmabatch up` (which starts an "
                "embedded PostgreSQL) or set DATABASE_URL=postgresql+asyncpg://user@host:5432/db"
            )
        return self.database_url

    def require_nats_url(self) -> str:
        if not self.nats_url:
            raise RuntimeError(
                "NATS_URL is not set: run the service under `sigmabatch up` (which starts an "
                "embedded nats-server) or set NATS_URL=nats://host:4222"
            )
        return self.nats_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: env is read once per process)."""
    return Settings()
