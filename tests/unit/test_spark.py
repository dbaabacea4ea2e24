"""The session helper's settings, checked without starting Spark."""

from __future__ import annotations

from churn.spark import session_conf


class TestSessionConf:
    def test_local_session_routes_s3_to_s3a_and_binds_loopback(self, monkeypatch):
        monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        conf = session_conf("local[2]", arrow_batch_size=5000)
        assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
        assert conf["spark.driver.host"] == "127.0.0.1"
        assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "5000"
        assert conf["spark.sql.sources.partitionOverwriteMode"] == "dynamic"

    def test_cluster_session_keeps_the_platforms_s3_handler(self):
        conf = session_conf(None, arrow_batch_size=None)
        assert "spark.hadoop.fs.s3.impl" not in conf
        assert "spark.driver.host" not in conf
        assert conf["spark.sql.session.timeZone"] == "UTC"

    def test_moto_endpoint_switches_to_path_style(self, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
        conf = session_conf("local[1]", arrow_batch_size=None)
        assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5000"
        assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
