"""docker-compose.yaml (no Docker engine here): services, images, healthchecks, mounts, env."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")
AIRFLOW_COMMANDS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
PROJECT_MOUNTS = {"./dags": "/opt/airflow/dags", "./plugins": "/opt/airflow/plugins",
                  "./include": "/opt/airflow/include", "./data": "/opt/airflow/data"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def mounts(service: dict) -> dict[str, str]:
    return dict(volume.split(":")[:2] for volume in service.get("volumes", []))


class TestServices:
    def test_all_components_present(self, services):
        assert set(services) == {"postgres", "airflow-init", "ray-head", "spark-master",
                                 "spark-worker", *AIRFLOW_SERVICES}

    @pytest.mark.parametrize("name", AIRFLOW_SERVICES)
    def test_airflow_component_command(self, services, name):
        assert services[name]["command"] == AIRFLOW_COMMANDS[name]

    @pytest.mark.parametrize("name", ["postgres", "ray-head", "spark-master", "spark-worker",
                                      *AIRFLOW_SERVICES])
    def test_long_running_services_have_healthchecks(self, services, name):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert check["retries"] >= 3

    def test_images(self, services):
        assert services["postgres"]["image"].startswith("postgres:")
        for name in (*AIRFLOW_SERVICES, "airflow-init", "ray-head", "spark-master",
                     "spark-worker"):
            assert services[name]["image"] == "churn-pipeline:latest", name
            assert services[name]["build"] == ".", name

    def test_airflow_waits_for_db_and_init(self, services):
        for name in AIRFLOW_SERVICES:
            depends = services[name]["depends_on"]
            assert depends["postgres"]["condition"] == "service_healthy"
            assert depends["airflow-init"]["condition"] == "service_completed_successfully"

    def test_ports_bound_to_loopback(self, services):
        assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
        assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
        assert services["spark-master"]["ports"] == ["127.0.0.1:8090:8090"]


class TestSparkCluster:
    def test_workers_join_the_master_airflow_submits_to(self, services):
        master = services["spark-master"]["command"][-1]
        assert "org.apache.spark.deploy.master.Master --host spark-master --port 7077" in master
        worker = services["spark-worker"]
        assert worker["command"][-1].endswith("spark://spark-master:7077")
        assert worker["depends_on"]["spark-master"]["condition"] == "service_healthy"
        assert worker["deploy"]["replicas"] == "${SPARK_WORKERS:-2}"

    def test_executors_see_the_drivers_data_paths(self, services):
        assert mounts(services["spark-worker"])["./data"] == (
            mounts(services["airflow-scheduler"])["./data"])

    def test_scheduler_waits_for_the_master(self, services):
        depends = services["airflow-scheduler"]["depends_on"]
        assert depends["spark-master"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"


class TestMountsAndEnv:
    @pytest.mark.parametrize("name", AIRFLOW_SERVICES)
    def test_project_folders_mounted(self, services, name):
        assert PROJECT_MOUNTS.items() <= mounts(services[name]).items()

    def test_ray_head_sees_the_same_data_and_code_paths(self, services):
        ray_mounts = mounts(services["ray-head"])
        assert ray_mounts["./data"] == "/opt/airflow/data"
        assert ray_mounts["./include"] == "/opt/airflow/include"

    def test_connections_preconfigured(self, services):
        env = services["airflow-scheduler"]["environment"]
        spark = json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
        assert (spark["host"], spark["port"], spark["extra"]["deploy-mode"]) == (
            "spark://spark-master", 7077, "client")
        assert '"host": "ray-head"' in env["AIRFLOW_CONN_RAY_DEFAULT"]
        assert "${RAY_AUTH_TOKEN" in env["AIRFLOW_CONN_RAY_DEFAULT"]

    def test_executor_and_database(self, services):
        env = services["airflow-triggerer"]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/")

    def test_ray_token_auth(self, services):
        env = services["ray-head"]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN")


class TestNoSecretsCommitted:
    SECRET_KEYS = re.compile(r"(PASSWORD|SECRET|TOKEN|FERNET)(?!.*_FILE$)", re.IGNORECASE)

    def test_secret_values_come_from_env_file(self, services):
        for name, service in services.items():
            for key, value in (service.get("environment") or {}).items():
                if self.SECRET_KEYS.search(key):
                    assert str(value).startswith("${"), f"{name}.{key} is hard-coded"

    def test_env_example_lists_every_interpolated_variable(self):
        text = (REPO_ROOT / "docker-compose.yaml").read_text()
        used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))  # `$${X}` is the container's
        example = (REPO_ROOT / ".env.example").read_text()
        declared = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
        assert used <= declared

    def test_env_file_ignored_by_git(self):
        ignored = (REPO_ROOT / ".gitignore").read_text().split()
        assert ".env" in ignored


class TestDockerfile:
    def test_java_and_pinned_requirements(self):
        text = (REPO_ROOT / "Dockerfile").read_text()
        assert text.startswith("# ") and "FROM apache/airflow:3.3.2-python3.11" in text
        assert "openjdk-17-jre-headless" in text
        assert "pip install --no-cache-dir -r requirements.txt" in text
        assert "PYSPARK_PYTHON" in text
