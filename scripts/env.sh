# Environment every project command runs in (sourced by the Makefile's targets).
# Spark workers must use the venv's python; Spark and Ray stay on loopback.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export PATH="$REPO_ROOT/.venv/bin:$PATH"
export PYSPARK_PYTHON="$REPO_ROOT/.venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$REPO_ROOT/.venv/bin/python"
export SPARK_LOCAL_IP=127.0.0.1
export RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$REPO_ROOT:$REPO_ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export CHURN_DATA_ROOT="${CHURN_DATA_ROOT:-$REPO_ROOT/data}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
# SQLite: wait for the write lock instead of failing with "database is locked" (see the module)
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS:-churn_airflow.sqlite.CONNECT_ARGS}"
