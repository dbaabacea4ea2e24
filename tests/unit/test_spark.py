"""The session helper's settings: pure functions of the environment they are given (checked
without starting Spark), then what the shared real session does with them."""

from __future__ import annotations

import pytest

from churn.spark import resolve_master, session_conf, set_default_shuffle_partitions

LOCAL_ENV = {"SPARK_LOCAL_IP": "127.0.0.1"}


class TestResolveMaster:
    @pytest.mark.parametrize(("master", "env", "expected"), [
        ("local[2]", {"SPARK_MASTER": "yarn"}, "local[2]"),  # an explicit master wins
        (None, {"SPARK_MASTER": "spark://h:7077", "PYSPARK_GATEWAY_PORT": "1"}, "spark://h:7077"),
        (None, {"PYSPARK_GATEWAY_PORT": "40123"}, None),  # spark-submit already chose it
        (None, {}, "local[*]"),
    ])
    def test_explicit_then_env_then_launcher_then_local(self, master, env, expected):
        assert resolve_master(master, env) == expected


class TestSessionConf:
    def test_local_session_routes_s3_to_s3a_and_binds_loopback(self):
        conf = session_conf("local[2]", arrow_batch_size=5000, env=LOCAL_ENV)
        assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
        assert conf["spark.driver.host"] == "127.0.0.1"
        assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "5000"
        assert conf["spark.sql.sources.partitionOverwriteMode"] == "dynamic"
        assert conf["spark.sql.sources.parallelPartitionDiscovery.threshold"] == "1024"

    def test_cluster_session_keeps_the_platforms_s3_handler(self):
        conf = session_conf(None, arrow_batch_size=None, env=LOCAL_ENV)
        assert "spark.hadoop.fs.s3.impl" not in conf
        assert "spark.driver.host" not in conf
        assert "spark.sql.sources.parallelPartitionDiscovery.threshold" not in conf
        assert conf["spark.sql.session.timeZone"] == "UTC"

    def test_moto_endpoint_switches_to_path_style(self):
        conf = session_conf("local[1]", arrow_batch_size=None,
                            env={"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"})
        assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5000"
        assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"

    def test_workers_use_the_given_python(self):
        conf = session_conf("local[1]", arrow_batch_size=None, env={"PYSPARK_PYTHON": "/v/python"})
        assert conf["spark.pyspark.python"] == conf["spark.executorEnv.PYSPARK_PYTHON"] == (
            "/v/python")

    def test_reads_only_the_env_it_is_given(self, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere:1")
        monkeypatch.setenv("PYSPARK_PYTHON", "/elsewhere/python")
        conf = session_conf("local[1]", arrow_batch_size=None, env={})
        assert "spark.hadoop.fs.s3a.endpoint" not in conf and "spark.pyspark.python" not in conf


class TestBuiltSession:
    def test_building_a_column_costs_three_py4j_round_trips(self, spark, monkeypatch):
        """DataFrame debugging is off: with it, each Column function also records its Python
        call site in the JVM (13 round trips per `F.col`, ~15,000 per one-day build)."""
        from py4j import clientserver
        from pyspark.sql import functions as F

        F.col("customer_id")  # the first one also reads (and caches) the setting
        sent = []
        send = clientserver.ClientServerConnection.send_command
        monkeypatch.setattr(clientserver.ClientServerConnection, "send_command",
                            lambda self, command: sent.append(command) or send(self, command))
        F.col("customer_id")
        assert len(sent) == 3, sent
        assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"

    def test_a_launcher_chosen_shuffle_size_is_kept(self, spark):
        """The shared session was built with 2 (in its SparkConf, as `spark-submit --conf` or
        `spark-defaults.conf` would put it): the local default of 8 must not replace it."""
        set_default_shuffle_partitions(spark, explicit=False)
        assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
