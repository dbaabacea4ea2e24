# One image for every Airflow component and the Ray head: same Python, same pinned libraries, same
# `churn` package, so a Ray job and a Spark task run exactly the code the DAG was parsed with.
FROM apache/airflow:3.3.2-python3.11

USER root
# Spark 4 needs Java 17; procps gives `ps` to spark-submit's scripts; git stamps the code version.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps git \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64

USER airflow
WORKDIR /opt/airflow
COPY --chown=airflow:root requirements.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=airflow:root include/ include/
RUN pip install --no-cache-dir --no-deps -e .
COPY --chown=airflow:root spark_jobs/ spark_jobs/
COPY --chown=airflow:root ray_jobs/ ray_jobs/
COPY --chown=airflow:root scripts/ scripts/

# Spark workers and Ray job drivers use this interpreter; Spark stays on the container's address.
ENV PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python \
    PYTHONPATH=/opt/airflow:/opt/airflow/plugins \
    RAY_USAGE_STATS_ENABLED=0
