"""The `sigmabatch` command: what operators and cron run (docs/design.md §2).

    sigmabatch up [--data-dir DIR] [--port N] [--nats-nodes 3]   the whole system, embedded
    sigmabatch demo [--data-dir DIR] [--port N] [--nats-nodes 3] up + universe, backfill, uploads
    sigmabatch service NAME                        one service (deployments: one per container)
    sigmabatch trigger nightly [--date D]          what cron runs
    sigmabatch migrate | status
    sigmabatch token create --user NAME [--admin] [--expires-days N] | list | revoke ID|--user NAME
    sigmabatch jobs retry ID                       re-drive a failed job

Operator commands find the system through DATABASE_URL / NATS_URL, else through the
`runtime.json` that a running `sigmabatch up` wrote in its data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sigmabatch.supervisor import SERVICES, AlreadyRunning, PortInUse, running_runtime
from sigmabatch.tables import format_table, short

log = logging.getLogger("sigmabatch")


class CommandError(RuntimeError):
    """A failure to report in one line, without a traceback."""


# -- where the system is -------------------------------------------------------------------


def _settings() -> Any:
    from libs.common import bootstrap

    return bootstrap.settings()


def default_data_dir() -> Path:
    return Path(_settings().data_dir)


def resolve_urls(data_dir: Path) -> tuple[str | None, str | None]:
    """(database_url, nats_url): env first, then the runtime.json of a running `up`."""
    settings = _settings()
    runtime = running_runtime(data_dir) or {}
    return (
        settings.database_url or runtime.get("database_url"),
        settings.nats_url or runtime.get("nats_url"),
    )


@contextlib.contextmanager
def database_url_for(data_dir: Path) -> Iterator[str]:
    """A database URL; with none configured and nothing running, the data dir's embedded
    PostgreSQL is started for the command and stopped after it."""
    database_url, _ = resolve_urls(data_dir)
    if database_url:
        yield database_url
        return
    from sigmabatch.embedded import EmbeddedPostgres

    log.info("no DATABASE_URL and no running system: using the embedded PostgreSQL of %s", data_dir)
    with EmbeddedPostgres(Path(data_dir) / "postgres") as postgres:
        yield postgres.url


def resolve_stream_replicas(data_dir: Path) -> int:
    """The replica count the running system declared its streams with: a one-shot command
    that declares them too (the trigger) must not undo a cluster's R3."""
    if "SIGMABATCH_STREAM_REPLICAS" in os.environ:
        return int(_settings().stream_replicas)
    runtime = running_runtime(data_dir) or {}
    return int(runtime.get("stream_replicas") or _settings().stream_replicas)


def require_nats_url(data_dir: Path) -> str:
    _, nats_url = resolve_urls(data_dir)
    if not nats_url:
        raise CommandError(
            f"no NATS_URL set and no running `sigmabatch up` in {data_dir}: "
            "start the system or set NATS_URL"
        )
    return nats_url


# -- commands ------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from sigmabatch.supervisor import run_up

    return asyncio.run(run_up(args.data_dir, args.port, nats_nodes=args.nats_nodes))


def cmd_demo(args: argparse.Namespace) -> int:
    from sigmabatch.demo import run_demo

    return asyncio.run(
        run_demo(args.data_dir, args.port, examples_dir=args.examples, nats_nodes=args.nats_nodes)
    )


def cmd_service(args: argparse.Namespace) -> int:
    """Replace this process with the service (signals reach it directly, as in a container)."""
    os.execv(sys.executable, [sys.executable, "-m", f"services.{args.name}"])
    return 0  # not reached


def default_target_date() -> dt.date:
    """The date a trigger without --date batches up to (the symbol batch resolves it alike)."""
    from libs.common.calendar import effective_trading_date

    settings = _settings()
    return effective_trading_date(
        dt.datetime.now(dt.UTC), dt.timedelta(minutes=settings.settle_delay_minutes)
    )


def cmd_trigger(args: argparse.Namespace) -> int:
    from sigmabatch.trigger import publish_nightly

    nats_url = require_nats_url(args.data_dir)
    database_url, _ = resolve_urls(args.data_dir)
    if args.wait and not database_url:
        raise CommandError(
            "--wait reads progress from the database: set DATABASE_URL or start `sigmabatch up`"
        )
    target = args.date or default_target_date()
    key = target.isoformat()
    publish = True
    if database_url:  # say at once what the batch would find (cron without a DB skips this)
        state = asyncio.run(_checked_state(database_url, target))
        if state.running_key is not None:
            done, total = state.running_progress or (0, 0)
            same = state.running_key == key
            print(
                f"a symbol batch run is in progress (target {state.running_key}, phase "
                f"{state.running_phase or 'starting'}, {done}/{total})"
                + (f": it covers {key}" if same else f": the run for {key} starts after it")
                + ("; waiting" if args.wait else "")
            )
            publish = not same or args.rerun
        elif state.date_status is not None and not args.rerun:
            print(
                f"{key} is already complete ({state.date_status}: {state.symbols_total} symbols, "
                f"{state.symbols_failed} failed); nothing to do. `--rerun` re-runs it."
            )
            return 0
        elif state.watermark is not None and target < state.watermark and not args.rerun:
            print(
                f"{key} is before the watermark ({state.watermark}) and was not batched; "
                "nothing to do without `--rerun`."
            )
            return 0
    since = dt.datetime.now(dt.UTC)
    if publish:
        msg_id, published = asyncio.run(
            publish_nightly(nats_url, target if args.date else None, args.requested_by,
                            args.rerun, replicas=resolve_stream_replicas(args.data_dir))
        )
        if args.rerun:  # a rerun is its own job (see symbol_batch.handlers.rerun_key)
            key = f"{key}:rerun:{msg_id.rsplit(':', 1)[-1]}"
        if published:
            print(f"published batch.nightly.requested ({msg_id}) for {key}")
        else:
            print(f"batch.nightly.requested ({msg_id}) was already published: duplicate dropped")
    if not args.wait:
        return 0
    assert database_url is not None
    return asyncio.run(_wait(database_url, key, since, args.timeout))


async def _checked_state(database_url: str, target: dt.date) -> Any:
    from libs.common.db import dispose_engines
    from sigmabatch.batch_wait import batch_state

    try:
        return await batch_state(database_url, target)
    finally:
        await dispose_engines()


async def _wait(database_url: str, key: str, since: dt.datetime, within: float) -> int:
    from libs.common.db import dispose_engines
    from sigmabatch.batch_wait import wait_for_batch

    try:
        return await wait_for_batch(database_url, key, since - dt.timedelta(seconds=5),
                                    within_seconds=within)
    finally:
        await dispose_engines()


async def retry_job(database_url: str, nats_url: str, job_id: uuid.UUID) -> str:
    """Re-drive a failed job: its recorded message is published again."""
    from libs.common import bootstrap
    from libs.common.db import dispose_engines
    from libs.common.jobs import redrive_job

    connection = await bootstrap.connect_bus(_settings(), "sigmabatch-jobs-retry",
                                             long_lived=False, nats_url=nats_url)
    try:
        return await redrive_job(database_url, connection.js, connection.topology, job_id)
    finally:
        await connection.nc.close()
        await dispose_engines()


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from libs.common.jobs import NotRetryable

    database_url, nats_url = resolve_urls(args.data_dir)
    if not database_url or not nats_url:
        raise CommandError("no DATABASE_URL/NATS_URL set and no running `sigmabatch up`")
    try:
        msg_id = asyncio.run(retry_job(database_url, nats_url, args.job_id))
    except NotRetryable as exc:
        raise CommandError(str(exc)) from exc
    print(f"job {args.job_id} re-driven ({msg_id})")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from libs.common.migrate import head_revision, upgrade

    with database_url_for(args.data_dir) as database_url:
        upgrade(database_url)
    print(f"database at revision {head_revision()}")
    return 0


async def run_retention(
    database_url: str, keep_months: int, apply: bool, today: dt.date
) -> str:
    import asyncpg

    from libs.common import partitions
    from libs.common.db import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        plan = await partitions.plan_retention(conn, keep_months, today)
        if apply:
            await partitions.apply_retention(conn, plan)
    finally:
        await conn.close()
    return partitions.describe_plan(plan, applied=apply)


def cmd_retention(args: argparse.Namespace) -> int:
    """Drop snapshot month partitions older than --keep-months (dry run unless --apply)."""
    if args.keep_months < 1:
        raise CommandError("--keep-months must be at least 1")
    with database_url_for(args.data_dir) as database_url:
        print(asyncio.run(run_retention(
            database_url, args.keep_months, args.apply, args.as_of or dt.date.today())))
    return 0


async def create_token(
    database_url: str, username: str, admin: bool, expires_days: int | None = None
) -> str:
    from libs.common.auth import create_user_token
    from libs.common.db import dispose_engines, session_scope

    if expires_days is None:
        expires_days = _settings().token_expires_days
    try:
        async with session_scope(database_url) as session:
            return await create_user_token(session, username, admin, expires_days=expires_days)
    finally:
        await dispose_engines()


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.expires_days is not None and args.expires_days < 0:
        raise CommandError("--expires-days must be 0 (never expires) or more")
    with database_url_for(args.data_dir) as database_url:
        try:
            token = asyncio.run(
                create_token(database_url, args.user, args.admin, args.expires_days)
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    print(token)
    return 0


async def token_rows(database_url: str, username: str | None) -> list[dict[str, Any]]:
    from libs.common.auth import list_tokens
    from libs.common.db import dispose_engines, session_scope

    try:
        async with session_scope(database_url) as session:
            return await list_tokens(session, username)
    finally:
        await dispose_engines()


def cmd_token_list(args: argparse.Namespace) -> int:
    """Tokens' metadata: id, user, status, dates (the secret is never stored, so never shown)."""
    with database_url_for(args.data_dir) as database_url:
        rows = asyncio.run(token_rows(database_url, args.user))
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0

    def minute(value: Any) -> str | None:
        return None if value is None else f"{value:%Y-%m-%d %H:%M}"

    shown = [
        {**row, **{k: minute(row[k]) for k in ("created_at", "expires_at", "last_used_at")},
         "expires_at": minute(row["expires_at"]) or "never"}
        for row in rows
    ]
    print(format_table(shown, ("id", "user", "admin", "status", "name", "created_at",
                               "expires_at", "last_used_at")))
    return 0


async def revoke(database_url: str, token_id: uuid.UUID | None, username: str | None) -> int:
    from libs.common.auth import revoke_tokens
    from libs.common.db import dispose_engines, session_scope

    try:
        async with session_scope(database_url) as session:
            return await revoke_tokens(session, token_id=token_id, username=username)
    finally:
        await dispose_engines()


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.user is None):
        raise CommandError("give a token ID (see `sigmabatch token list`) or --user NAME")
    token_id = None
    if args.id is not None:
        try:
            token_id = uuid.UUID(args.id)
        except ValueError as exc:
            raise CommandError(f"not a token id: {args.id!r} (see `sigmabatch token list`)") from exc
    with database_url_for(args.data_dir) as database_url:
        try:
            revoked = asyncio.run(revoke(database_url, token_id, args.user))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    from libs.common.auth import CACHE_TTL_SECONDS

    print(f"revoked {revoked} token(s); the API refuses them within "
          f"{CACHE_TTL_SECONDS:.0f} s (its token cache)")
    return 0


async def gather_status(database_url: str, nats_url: str | None) -> dict[str, Any]:
    """Jobs, the watermark and bus lag, as one JSON-able dict."""
    from libs.common.db import dispose_engines, session_scope
    from sigmabatch.queries import system_status

    try:
        async with session_scope(database_url) as session:
            status = await system_status(session)
    finally:
        await dispose_engines()
    status["bus"] = await _bus_status(nats_url)
    return status


async def _bus_status(nats_url: str | None) -> dict[str, Any]:
    if not nats_url:
        return {"error": "NATS_URL unknown (no running system found)"}
    from nats.js.errors import NotFoundError

    from libs.common import bootstrap, bus

    topology = bootstrap.topology(_settings())
    try:
        nc = await bus.connect(nats_url, "sigmabatch-status", reconnect=False)
    except Exception as exc:
        return {"url": nats_url, "error": f"unreachable: {exc}"}
    try:
        js = nc.jetstream()
        streams = []
        for name in (topology.jobs_stream, topology.events_stream):
            with contextlib.suppress(NotFoundError):
                info = await js.stream_info(name)
                streams.append(
                    {
                        "stream": name,
                        "messages": info.state.messages,
                        "bytes": info.state.bytes,
                        "replicas": info.config.num_replicas,
                        **bus.cluster_summary(info.cluster),
                    }
                )
        return {
            "url": nats_url,
            "streams": streams,
            "consumers": await bus.consumer_lag(js, topology),
        }
    finally:
        await nc.close()


def render_status(status: dict[str, Any]) -> str:
    mark = status["watermark"]
    job_columns = ["job_type", "job_key", "status", "phase", "progress", "started_at", "error"]

    def job_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                **{k: short(v) for k, v in row.items()},
                "phase": row["current_phase"],
                "progress": f"{row['progress_current']}/{row['progress_total']}"
                + (f" {row['progress_unit']}" if row["progress_unit"] else ""),
            }
            for row in rows
        ]

    parts = [
        f"Watermark: last completed symbol batch date {mark['last_completed_date'] or '(none)'}"
        f" (latest recorded {mark['last_date'] or '(none)'}, {mark['dates_recorded']} dates)",
        "Holes (sessions never batched inside the history; the next runs fill them): "
        + (", ".join(d.isoformat() for d in status["holes"][:50]) or "none")
        + (f" … ({len(status['holes'])} in all)" if len(status["holes"]) > 50 else ""),
        "Partial dates (some symbols failed; retried by the next runs): "
        + (", ".join(f"{r['batch_date']} ({r['symbols_failed']} failed)"
                     for r in status["partial_dates"]) or "none"),
        "Jobs in the last 24 h: "
        + (", ".join(f"{k} {v}" for k, v in sorted(status["last_24h"].items())) or "none"),
        "",
        "Running jobs:",
        format_table(job_rows(status["running"]), job_columns),
        "",
        "Latest job of each type:",
        format_table(job_rows(status["latest_per_type"]), job_columns),
        "",
        "Recent jobs:",
        format_table(job_rows(status["recent"]), job_columns),
        "",
    ]
    bus_status = status["bus"]
    if "error" in bus_status:
        parts.append(f"Bus: {bus_status['error']}")
    else:
        parts += [
            f"Streams ({bus_status['url']}):",
            format_table(
                bus_status["streams"], ["stream", "messages", "bytes", "replicas", "leader"]
            ),
            "",
            "Consumers (pending = not yet delivered, ack_pending = in hand):",
            format_table(
                bus_status["consumers"],
                ["stream", "consumer", "pending", "ack_pending", "redelivered", "leader"],
            ),
        ]
        replica_rows = [
            {"of": row.get("consumer") or row["stream"], **peer}
            for row in [*bus_status["streams"], *bus_status["consumers"]]
            for peer in row.get("peers", [])
        ]
        if replica_rows:
            parts += [
                "",
                "Replicas (lag = operations behind the leader; current = caught up):",
                format_table(replica_rows, ["of", "name", "current", "lag", "active", "offline"]),
            ]
    return "\n".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    database_url, nats_url = resolve_urls(args.data_dir)
    if not database_url:
        raise CommandError(
            f"no DATABASE_URL set and no running `sigmabatch up` in {args.data_dir}: "
            "start the system or set DATABASE_URL"
        )
    status = asyncio.run(gather_status(database_url, nats_url))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(render_status(status))
    return 0


# -- parser --------------------------------------------------------------------------------


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigmabatch",
        description="Batch and onboarding backend of a portfolio-risk platform (NATS + PostgreSQL).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_data_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="where embedded servers keep data and runtime.json "
            "(default: $SIGMABATCH_DATA_DIR or ./.sigmabatch)",
        )
        return sub

    for name, helptext in (
        ("up", "run the whole system (embedded NATS/PostgreSQL where no URL is set)"),
        ("demo", "up, then load the sample universe, backfill, upload examples, summarize"),
    ):
        sub = with_data_dir(commands.add_parser(name, help=helptext))
        sub.add_argument(
            "--port",
            type=int,
            default=None,
            help="API port (0 = a free port; default: $API_PORT or 8000 for up, free for demo)",
        )
        sub.add_argument(
            "--nats-nodes",
            type=int,
            default=1,
            choices=(1, 3, 5),
            help="embedded NATS servers: 1, or a cluster of 3 (or 5) on loopback with "
            "R3 streams (default 1; ignored when NATS_URL is set)",
        )
        sub.set_defaults(handler=cmd_up if name == "up" else cmd_demo)
        if name == "demo":
            sub.add_argument(
                "--examples", type=Path, default=None, help="directory of portfolio CSVs to upload"
            )

    sub = commands.add_parser("service", help="run one service in the foreground")
    sub.add_argument("name", choices=SERVICES)
    sub.set_defaults(handler=cmd_service)

    trigger = commands.add_parser("trigger", help="publish a trigger (what cron runs)")
    trigger_kinds = trigger.add_subparsers(dest="kind", required=True, metavar="KIND")
    nightly = with_data_dir(trigger_kinds.add_parser("nightly", help="the nightly batch"))
    nightly.add_argument(
        "--date", type=_date, default=None, help="target trading date (default: latest)"
    )
    nightly.add_argument("--requested-by", default="cron", help="recorded on the request")
    nightly.add_argument(
        "--rerun",
        action="store_true",
        help="restate the date: re-fetch it, recompute its betas and restate the snapshots "
        "from it to the latest date (also bypasses the duplicate window)",
    )
    nightly.add_argument(
        "--wait",
        action="store_true",
        help="show the run's progress per phase and per date until it and the refresh of its "
        "dates finish, then a summary (exit 1 if it failed)",
    )
    nightly.add_argument(
        "--timeout", type=float, default=3600.0, help="--wait gives up after this many seconds"
    )
    nightly.set_defaults(handler=cmd_trigger)

    with_data_dir(commands.add_parser("migrate", help="migrate the database to head")).set_defaults(
        handler=cmd_migrate
    )

    retention = with_data_dir(commands.add_parser(
        "retention",
        help="drop month partitions of portfolio/position snapshots older than N months "
        "(dry run unless --apply)",
    ))
    retention.add_argument(
        "--keep-months", type=int, required=True,
        help="keep the current month and the N months before it whole",
    )
    retention.add_argument(
        "--apply", action="store_true",
        help="detach and drop the partitions (default: only show what would be dropped)",
    )
    retention.add_argument(
        "--as-of", type=_date, default=None, help="today for the window (default: today)"
    )
    retention.set_defaults(handler=cmd_retention)

    status = with_data_dir(commands.add_parser("status", help="jobs, watermark, bus lag"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    jobs = commands.add_parser("jobs", help="jobs (batch_run_history)")
    job_actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    retry = with_data_dir(job_actions.add_parser(
        "retry", help="re-drive a failed job (re-publish its recorded message)"))
    retry.add_argument("job_id", type=uuid.UUID, help="the failed job's id")
    retry.set_defaults(handler=cmd_jobs_retry)

    token = commands.add_parser("token", help="API tokens")
    token_actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = with_data_dir(token_actions.add_parser("create", help="create a user's token"))
    create.add_argument("--user", default=getpass.getuser(), help="user name (created if new)")
    create.add_argument("--admin", action="store_true", help="an admin user")
    create.add_argument(
        "--expires-days",
        type=int,
        default=None,
        help="days until it expires (0 = never; default: $SIGMABATCH_TOKEN_EXPIRES_DAYS or 90)",
    )
    create.set_defaults(handler=cmd_token_create)
    listing = with_data_dir(
        token_actions.add_parser("list", help="tokens' ids, users, status (no secrets)")
    )
    listing.add_argument("--user", default=None, help="only this user's tokens")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_token_list)
    revoke_parser = with_data_dir(
        token_actions.add_parser("revoke", help="revoke a token by id, or all of a user's")
    )
    revoke_parser.add_argument("id", nargs="?", default=None, help="token id (token list)")
    revoke_parser.add_argument("--user", default=None, help="revoke every token of this user")
    revoke_parser.set_defaults(handler=cmd_token_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("nats", "asyncio", "httpx", "alembic", "libs.common.bus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "data_dir", "unset") is None:
        args.data_dir = default_data_dir()
    if isinstance(getattr(args, "data_dir", None), Path):
        args.data_dir = args.data_dir.resolve()
    if getattr(args, "port", "unset") is None:
        # `demo` runs and exits: a free port spares a newcomer a clash with anything on 8000.
        args.port = 0 if args.command == "demo" else _settings().api_port
    try:
        return args.handler(args)
    except (CommandError, AlreadyRunning, PortInUse) as exc:
        print(f"sigmabatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
