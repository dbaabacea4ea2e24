"""SQLite settings for the local, SQLite-backed Airflow (`make airflow`, `make demo`, tests).

The scheduler, triggerer, API server and CLI all write the one SQLite file; with the driver's
default 5 s busy timeout a CLI call (e.g. `airflow backfill create`) made while the scheduler holds
the write lock on a busy machine fails with "database is locked". Waiting longer fixes the plain
case; a transaction that upgrades its read lock to a write lock can still fail at once (SQLite
does not wait there, to avoid a deadlock), so scripts and tests queue CLI writes such as
backfills before the scheduler starts, or retry them. Production uses Postgres.
Used through `AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=churn_airflow.sqlite.CONNECT_ARGS`.
"""

CONNECT_ARGS = {"timeout": 120}
