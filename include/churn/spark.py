"""The one SparkSession helper: every local-vs-cluster difference lives here.

Jobs and tests call `build_session` and never branch on the environment themselves. Under
spark-submit (EMR's `--master yarn`, or Airflow's local `--master local[2]`) the launcher's
`spark.master` holds and we leave it alone, but a local one still gets the local settings;
without a launcher the master defaults to `local[*]`. The environment is read once, when
`build_session` runs (never at import); `resolve_master` and `session_conf` take it as an argument.

Spark's own log level is WARN once the session is up (`CHURN_SPARK_LOG_LEVEL` overrides it): at
INFO one day on a few hundred customers writes ~1,400 per-task lines, which the Airflow task log
parses one by one (a local `build_features` task: 51 s at INFO, 37 s at WARN). The jobs log
their own progress (`churn.*` loggers) either way.

PySpark's DataFrame debugging (`spark.python.sql.dataFrameDebugging.enabled`) is off: it records
the Python call site of every Column function in the JVM, 13 py4j round trips per `F.col`
instead of 3. A one-day build makes ~15,000 of them with it and ~6,800 without (6.3 s instead of
7.1-8.6 s for a warm one-day build on 49 customers). Spark's errors still name the failing
expression; they only lose the Python line that built it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LOCAL_SHUFFLE_PARTITIONS = 8
DEFAULT_ARROW_BATCH_SIZE = 50_000
DEFAULT_LOG_LEVEL = "WARN"
LOG_LEVEL_ENV = "CHURN_SPARK_LOG_LEVEL"
_CREDENTIALS_PROVIDER = (
    "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
)


def resolve_master(master: str | None, env: Mapping[str, str]) -> str | None:
    """The master to set on the builder, or None when spark-submit already chose one.

    Args:
        master: an explicit master (`local[2]`, `yarn`, ...), or None.
        env: the process environment (`os.environ` when the session is built).

    Returns:
        `master` when given; else `SPARK_MASTER` from `env`; else None when this python was
        launched by spark-submit (its `--master`, default `local[*]`, already holds); else
        `local[*]`.
    """
    if master:
        return master
    if env.get("SPARK_MASTER"):
        return env["SPARK_MASTER"]
    if env.get("PYSPARK_GATEWAY_PORT"):
        return None
    return "local[*]"


def launcher_master() -> str | None:
    """The master spark-submit started this driver with (its JVM's `spark.master`), or None."""
    from pyspark import SparkConf, SparkContext

    # Attach to the launcher's JVM first: a SparkConf made without one holds no defaults.
    SparkContext._ensure_initialized()
    return SparkConf().get("spark.master", None)


def session_conf(master: str | None, arrow_batch_size: int | None,
                 env: Mapping[str, str]) -> dict[str, str]:
    """The settings every session gets (pure: testable without starting Spark).

    Args:
        master: the master the session runs on (None: unknown, treated as a cluster).
        arrow_batch_size: rows per Arrow batch for vectorized UDFs (None: the default).
        env: the process environment: `SPARK_LOCAL_IP`, `AWS_ENDPOINT_URL` and
            `PYSPARK_PYTHON` are read from it.

    Returns:
        Spark conf keys and values.
    """
    local = master is not None and master.startswith("local")
    conf = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(
            arrow_batch_size or DEFAULT_ARROW_BATCH_SIZE
        ),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.python.sql.dataFrameDebugging.enabled": "false",
    }
    if local:
        conf["spark.driver.host"] = env.get("SPARK_LOCAL_IP", "127.0.0.1")
        conf["spark.ui.enabled"] = "false"
        # A daily run reads its window's stored activity as one path per day (180 for a
        # 180-day window). Past 32 paths Spark lists them in a distributed job; on local disks
        # the driver lists a few hundred directories faster (a 180-day day: ~2 s less).
        conf["spark.sql.sources.parallelPartitionDiscovery.threshold"] = "1024"
        # Local Spark has no `s3://` handler: route it to S3A with the default AWS credential
        # chain. A cluster (EMR) keeps its own handler for `s3://` (EMRFS, instance role).
        conf["spark.hadoop.fs.s3.impl"] = "org.apache.hadoop.fs.s3a.S3AFileSystem"
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = _CREDENTIALS_PROVIDER
    endpoint = env.get("AWS_ENDPOINT_URL")
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
    python = env.get("PYSPARK_PYTHON")
    if python:
        conf["spark.pyspark.python"] = python
        conf["spark.executorEnv.PYSPARK_PYTHON"] = python
    return conf


def build_session(
    app_name: str,
    master: str | None = None,
    *,
    arrow_batch_size: int | None = None,
    extra_conf: dict | None = None,
) -> SparkSession:
    """Build (or get) the SparkSession for a job or a test.

    Args:
        app_name: the application name shown in the Spark UI and logs.
        master: an explicit master; None picks `SPARK_MASTER`, the launcher's, or `local[*]`.
        arrow_batch_size: rows per Arrow batch for vectorized UDFs.
        extra_conf: more settings, applied last (they win).

    Returns:
        The session: Arrow on, UTC, dynamic partition overwrite, S3A wired for `s3://` paths.
    """
    from pyspark.sql import SparkSession

    env = dict(os.environ)
    resolved = resolve_master(master, env)
    builder = SparkSession.builder.appName(app_name)
    if resolved is not None:
        builder = builder.master(resolved)
    effective = resolved if resolved is not None else launcher_master()
    extra = {str(k): str(v) for k, v in (extra_conf or {}).items()}
    for key, value in {**session_conf(effective, arrow_batch_size, env), **extra}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(env.get(LOG_LEVEL_ENV) or DEFAULT_LOG_LEVEL)
    set_default_shuffle_partitions(session, explicit="spark.sql.shuffle.partitions" in extra)
    return session


def set_default_shuffle_partitions(session: SparkSession, *, explicit: bool) -> None:
    """Use `LOCAL_SHUFFLE_PARTITIONS` on a local master unless someone chose a value.

    A value from `extra_conf` or from the launcher (`spark-submit --conf`, `spark-defaults.conf`,
    EMR's cluster configuration) is kept: a cluster is sized by whoever runs it, and Spark's
    own default (200) stays the default there.
    """
    launcher_set = session.sparkContext.getConf().contains("spark.sql.shuffle.partitions")
    if explicit or launcher_set or not session.sparkContext.master.startswith("local"):
        return
    session.conf.set("spark.sql.shuffle.partitions", str(LOCAL_SHUFFLE_PARTITIONS))


def to_spark_uri(uri: str) -> str:
    """A path Spark's Hadoop layer reads: `s3://` becomes `s3a://`, local paths stay as they are."""
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://"):]
    return uri


def write_day_partitions(frame: DataFrame, days: Iterable[str],
                         partition_uri: Callable[[str], str], day_column: str = "ds",
                         lock_timeout: float | None = None) -> None:
    """Write one partition per day in one Spark job, then swap each day in atomically.

    Holding the writer lock of every day of the range (`storage.partition_locks`), it first
    finishes or undoes what a killed earlier writer of these days left, then writes the frame
    once, partitioned by a copy of `day_column`, into a hidden staging directory named by its
    day range, counting the rows of each day as they are written (a Spark `Observation`: no
    second pass). Before any swap, each day's staged files must hold exactly that count, so a
    day whose staging was lost fails instead of becoming empty; only a day with 0 rows gets an
    empty Parquet file with the schema. Then each day is swapped into `partition_uri(day)`
    (files keep the `ds` column). Days not in `days` are never touched.

    Args:
        frame: rows to write, with a `YYYY-MM-DD` string column `day_column`.
        days: the days to (re)write.
        partition_uri: maps a day to its final partition path, e.g. `layout.features`.
        day_column: the column holding the day.
        lock_timeout: seconds to wait for other writers of these days (default: storage's).

    Raises:
        churn.storage.StagingMismatchError: a day's staged rows differ from the rows computed.
        churn.storage.PartitionBusyError: another writer kept one of the days locked.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from churn.storage import (LOCK_TIMEOUT_SECONDS, check_staged_rows, ds_range, filesystem,
                               partition_locks, recover_partitions, staging_dir, swap_in)

    days = sorted(set(days))
    if not days:
        return
    area = partition_uri(days[0]).rstrip("/").rsplit("/", 1)[0]
    name = {ds: partition_uri(ds).rstrip("/").rsplit("/", 1)[1]
            for ds in ds_range(days[0], days[-1])}
    with partition_locks(area, name.values(), lock_timeout or LOCK_TIMEOUT_SECONDS):
        recover_partitions(area, [name[ds] for ds in days], staged_days=(days[0], days[-1]))
        staging = staging_dir(area, days)
        counted = Observation(f"rows per day of {staging}")
        staged = frame.where(frame[day_column].isin(days)).withColumn("_part", frame[day_column])
        staged = staged.observe(counted, *(F.count_if(F.col("_part") == ds).alias(ds)
                                           for ds in days))
        staged.write.mode("overwrite").partitionBy("_part").parquet(to_spark_uri(staging))
        try:
            sources = {ds: f"{staging}/_part={ds}" for ds in days}
            for ds, source in sources.items():
                if counted.get[ds] == 0:
                    write_empty_parquet(frame.schema, source)
                check_staged_rows(source, counted.get[ds], partition_uri(ds))
            for ds, source in sources.items():
                swap_in(source, partition_uri(ds))
        finally:
            fs, path = filesystem(staging)
            fs.delete_dir(path)


def write_empty_parquet(schema, directory_uri: str) -> None:
    """Write one Parquet file with no rows and the given Spark schema (no Spark job needed)."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    from churn.storage import filesystem

    fs, path = filesystem(directory_uri)
    fs.create_dir(path, recursive=True)
    empty = to_arrow_schema(schema).empty_table()
    pq.write_table(empty, f"{path}/part-00000-empty.parquet", filesystem=fs)
