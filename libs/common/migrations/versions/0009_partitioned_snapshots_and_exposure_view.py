"""Snapshots partitioned by month; position factor exposures derived on read (issue 13)

* `portfolio_snapshots` and `position_snapshots` become PARTITION BY RANGE (snapshot_date),
  one partition per month (`<table>_yYYYYmMM`) plus a DEFAULT partition (`<table>_default`)
  so an insert on a month nobody prepared never fails. Partitions are created by the SQL
  function `sigmabatch_ensure_snapshot_partitions(date)` (this migration for the months
  holding data and the current and next month; the refresh before it writes a date,
  `libs/common/partitions.py`); it moves a month's rows out of the default partition first.
  Keys include the partition key: portfolio_snapshots PK (id, snapshot_date) and the unique
  (portfolio_id, snapshot_date) the refresh's ON CONFLICT uses; position_snapshots PK
  (position_id, snapshot_date) as before. portfolio_snapshots keeps its foreign key to
  portfolios (ON DELETE CASCADE). position_snapshots loses its two row-level foreign keys
  (their checks were ~60% of the refresh's insert of 250k rows a day) like
  position_factor_exposures did in 0002: deleting positions (directly or through their
  portfolio's cascade) deletes their rows through a statement-level trigger. Nothing
  references these tables.
* `position_factor_exposures` (12 rows per position per day) is replaced by a VIEW with the
  same columns over position_snapshots (new columns: beta_symbol, beta_date, exposure_value,
  weight, written by the refresh with the position's mark) x symbol_factor_exposures of
  (beta_symbol, beta_date). Existing rows are carried over: weight as stored, exposure_value
  = weight x the snapshot's exposure base (equity, or gross exposure when the snapshot says
  so), beta_date = the symbol's latest betas on or before the date within 10 days (the
  refresh's rule, `repository.BETA_MAX_AGE_DAYS`).
* index (symbol, calculation_date) on symbol_factor_exposures: the view's join.

Downgrade restores the plain tables and the position_factor_exposures table (filled from the
view), its statement-level delete trigger (0002) and drops the new columns.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("portfolio_snapshots", "position_snapshots")

ENSURE_FUNCTION = r"""
CREATE FUNCTION sigmabatch_ensure_snapshot_partitions(day date) RETURNS integer
LANGUAGE plpgsql AS $$
-- The month partition of `day` for both snapshot tables, if missing: created like the parent,
-- filled with the month's rows parked in the default partition, then attached. Serialised by
-- an advisory lock, so concurrent refresh replicas create it once. Returns partitions made.
DECLARE
    lo date := date_trunc('month', day)::date;
    hi date := (date_trunc('month', day) + interval '1 month')::date;
    parent text;
    part text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sigmabatch_ensure_snapshot_partitions'));
    FOREACH parent IN ARRAY ARRAY['portfolio_snapshots', 'position_snapshots'] LOOP
        part := parent || to_char(lo, '"_y"YYYY"m"MM');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE snapshot_date >= %L '
                       'AND snapshot_date < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                       parent || '_default', lo, hi, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, lo, hi);
        made := made + 1;
    END LOOP;
    RETURN made;
END $$
"""

VIEW = """
CREATE VIEW position_factor_exposures AS
SELECT s.position_id,
       s.snapshot_date AS calculation_date,
       b.factor_name::varchar(64) AS factor_name,
       s.portfolio_id,
       b.beta,
       s.weight,
       round((b.beta * s.exposure_value)::numeric, 2)::numeric(24, 6) AS exposure_dollar
FROM position_snapshots s
JOIN symbol_factor_exposures b
  ON b.symbol = s.beta_symbol AND b.calculation_date = s.beta_date
WHERE s.weight IS NOT NULL AND b.beta <> 'NaN'::float8
"""

PFE_TABLE = """
CREATE TABLE position_factor_exposures (
    position_id uuid NOT NULL,
    calculation_date date NOT NULL,
    factor_name varchar(64) NOT NULL,
    portfolio_id uuid NOT NULL,
    beta double precision NOT NULL,
    weight double precision NOT NULL,
    exposure_dollar numeric(24, 6),
    CONSTRAINT position_factor_exposures_pkey
        PRIMARY KEY (position_id, calculation_date, factor_name)
)
"""


def _partition(table: str, portfolio_keys: bool) -> None:
    """Replace `table` by a partitioned copy with the same columns, keys and indexes."""
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
    op.execute(f"ALTER INDEX {table}_pkey RENAME TO {table}_unpartitioned_pkey")
    op.execute(
        f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS) PARTITION BY RANGE (snapshot_date)"
    )
    if portfolio_keys:
        op.execute("ALTER INDEX uq_portfolio_snapshots_day RENAME TO uq_portfolio_snapshots_day_old")
        op.execute("ALTER INDEX ix_portfolio_snapshots_date RENAME TO ix_portfolio_snapshots_date_old")
        op.execute(
            "ALTER TABLE portfolio_snapshots ADD CONSTRAINT portfolio_snapshots_pkey "
            "PRIMARY KEY (id, snapshot_date), ADD CONSTRAINT uq_portfolio_snapshots_day "
            "UNIQUE (portfolio_id, snapshot_date), ADD CONSTRAINT "
            "portfolio_snapshots_portfolio_id_fkey FOREIGN KEY (portfolio_id) "
            "REFERENCES portfolios (id) ON DELETE CASCADE"
        )
        op.execute("CREATE INDEX ix_portfolio_snapshots_date ON portfolio_snapshots (snapshot_date)")
    else:
        op.execute(
            "ALTER INDEX ix_position_snapshots_portfolio_date "
            "RENAME TO ix_position_snapshots_portfolio_date_old"
        )
        # No row-level foreign keys (their per-row checks were 60% of the refresh's insert of
        # 250k rows/day, like position_factor_exposures in 0002): the cascade from positions
        # (and through them portfolios) is kept by a statement-level trigger.
        op.execute(
            "ALTER TABLE position_snapshots ADD CONSTRAINT position_snapshots_pkey "
            "PRIMARY KEY (position_id, snapshot_date)"
        )
        op.execute(
            "CREATE INDEX ix_position_snapshots_portfolio_date "
            "ON position_snapshots (portfolio_id, snapshot_date)"
        )
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")


def upgrade() -> None:
    op.create_index(
        "ix_symbol_factor_exposures_symbol_date",
        "symbol_factor_exposures",
        ["symbol", "calculation_date"],
    )
    op.execute(
        "ALTER TABLE position_snapshots ADD COLUMN beta_symbol varchar(64), "
        "ADD COLUMN beta_date date, ADD COLUMN exposure_value double precision, "
        "ADD COLUMN weight double precision"
    )
    # Carry the stored position exposures over into the compact columns.
    op.execute(
        """
        UPDATE position_snapshots s SET
            weight = e.weight,
            beta_symbol = CASE WHEN x.investment_class = 'OPTIONS'
                                    AND x.underlying_symbol IS NOT NULL
                               THEN x.underlying_symbol ELSE x.symbol END,
            exposure_value = e.weight * (CASE WHEN p.exposure_basis = 'gross_exposure'
                                              THEN p.gross_exposure ELSE p.equity END)::float8
        FROM (SELECT DISTINCT ON (position_id, calculation_date) position_id, calculation_date,
                     weight
              FROM position_factor_exposures
              ORDER BY position_id, calculation_date) e,
             positions x, portfolio_snapshots p
        WHERE s.position_id = e.position_id AND s.snapshot_date = e.calculation_date
          AND x.id = s.position_id
          AND p.portfolio_id = s.portfolio_id AND p.snapshot_date = s.snapshot_date
        """
    )
    op.execute(
        """
        UPDATE position_snapshots s SET beta_date = (
            SELECT max(b.calculation_date) FROM symbol_factor_exposures b
            WHERE b.symbol = s.beta_symbol AND b.calculation_date <= s.snapshot_date
              AND b.calculation_date >= s.snapshot_date - 10)
        WHERE s.weight IS NOT NULL
        """
    )
    op.execute("DROP TRIGGER IF EXISTS positions_delete_exposures ON positions")
    op.execute("DROP FUNCTION IF EXISTS delete_position_factor_exposures()")
    op.execute("DROP TABLE position_factor_exposures")
    op.execute(
        """
        CREATE FUNCTION delete_position_snapshots() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM position_snapshots s USING gone WHERE s.position_id = gone.id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER positions_delete_snapshots
        AFTER DELETE ON positions REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION delete_position_snapshots();
        """
    )

    _partition("portfolio_snapshots", portfolio_keys=True)
    _partition("position_snapshots", portfolio_keys=False)
    op.execute(ENSURE_FUNCTION)
    op.execute(
        """
        SELECT sigmabatch_ensure_snapshot_partitions(m::date)
        FROM generate_series(
            date_trunc('month', LEAST(
                (SELECT min(snapshot_date) FROM portfolio_snapshots_unpartitioned),
                (SELECT min(snapshot_date) FROM position_snapshots_unpartitioned),
                current_date)),
            date_trunc('month', current_date) + interval '1 month',
            interval '1 month') AS m
        """
    )
    for table in TABLES:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
        op.execute(f"DROP TABLE {table}_unpartitioned")
    op.execute(VIEW)


def _unpartition(table: str) -> None:
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
    op.execute(f"ALTER INDEX {table}_pkey RENAME TO {table}_partitioned_pkey")
    op.execute(
        f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS)"
    )
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}_partitioned")
    op.execute(f"DROP TABLE {table}_partitioned")  # with its partitions and indexes
    if table == "portfolio_snapshots":
        op.execute(
            "ALTER TABLE portfolio_snapshots ADD CONSTRAINT portfolio_snapshots_pkey "
            "PRIMARY KEY (id), ADD CONSTRAINT uq_portfolio_snapshots_day "
            "UNIQUE (portfolio_id, snapshot_date), ADD CONSTRAINT "
            "portfolio_snapshots_portfolio_id_fkey FOREIGN KEY (portfolio_id) "
            "REFERENCES portfolios (id) ON DELETE CASCADE"
        )
        op.execute("CREATE INDEX ix_portfolio_snapshots_date ON portfolio_snapshots (snapshot_date)")
    else:
        # rows of positions deleted while their snapshot was being written (no FK at 0009)
        op.execute(
            "DELETE FROM position_snapshots s WHERE NOT EXISTS "
            "(SELECT 1 FROM positions x WHERE x.id = s.position_id)"
        )
        op.execute(
            "ALTER TABLE position_snapshots ADD CONSTRAINT position_snapshots_pkey "
            "PRIMARY KEY (position_id, snapshot_date), ADD CONSTRAINT "
            "position_snapshots_position_id_fkey FOREIGN KEY (position_id) "
            "REFERENCES positions (id) ON DELETE CASCADE, ADD CONSTRAINT "
            "position_snapshots_portfolio_id_fkey FOREIGN KEY (portfolio_id) "
            "REFERENCES portfolios (id) ON DELETE CASCADE"
        )
        op.execute(
            "CREATE INDEX ix_position_snapshots_portfolio_date "
            "ON position_snapshots (portfolio_id, snapshot_date)"
        )


def downgrade() -> None:
    op.execute("ALTER VIEW position_factor_exposures RENAME TO position_factor_exposures_view")
    op.execute(PFE_TABLE)
    op.execute(
        "INSERT INTO position_factor_exposures SELECT * FROM position_factor_exposures_view"
    )
    op.execute("DROP VIEW position_factor_exposures_view")
    op.execute(
        "CREATE INDEX ix_position_factor_exposures_portfolio_date "
        "ON position_factor_exposures (portfolio_id, calculation_date)"
    )
    op.execute(
        """
        CREATE FUNCTION delete_position_factor_exposures() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM position_factor_exposures e
            USING gone WHERE e.position_id = gone.id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER positions_delete_exposures
        AFTER DELETE ON positions REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION delete_position_factor_exposures();
        """
    )
    op.execute("DROP FUNCTION sigmabatch_ensure_snapshot_partitions(date)")
    op.execute("DROP TRIGGER positions_delete_snapshots ON positions")
    op.execute("DROP FUNCTION delete_position_snapshots()")
    for table in TABLES:
        _unpartition(table)
    op.execute(
        "ALTER TABLE position_snapshots DROP COLUMN beta_symbol, DROP COLUMN beta_date, "
        "DROP COLUMN exposure_value, DROP COLUMN weight"
    )
    op.drop_index("ix_symbol_factor_exposures_symbol_date", "symbol_factor_exposures")
