"""A real moto server (HTTP on 127.0.0.1, free port) for AWS tests, plus an EMR step driver.

moto's EMR never moves a step on by itself: the first step of a cluster is created RUNNING,
later ones PENDING, and they stay there (moto/emr/models.py `Cluster.add_steps`). A real
cluster finishes its steps; `emr_steps_finish` plays that part: while active, every
`DescribeStep` call moves the described step one state forward (PENDING -> RUNNING -> final).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.ray_head import free_port

REGION = "us-east-1"
_NEXT_STATE = {"PENDING": "RUNNING"}


@dataclass
class MotoServer:
    """A running moto server and the environment that points AWS clients at it."""

    server: object
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """Fake credentials, region, endpoint and Airflow's `aws_default` connection."""
        connection = {"conn_type": "aws", "extra": {"region_name": REGION,
                                                    "endpoint_url": self.endpoint_url}}
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        }

    def client(self, service: str):
        """A boto3 client for `service` on this server."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        """Stop the server thread."""
        self.server.stop()


def start_moto_server() -> MotoServer:
    """Start `moto.server.ThreadedMotoServer` on a free loopback port (returns when it serves)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return MotoServer(server, f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def emr_steps_finish(final_state: str = "COMPLETED") -> Iterator[list[tuple[str, str]]]:
    """While active, each DescribeStep moves that step one state on, ending in `final_state`.

    Yields:
        A list that records every (step_id, state) transition made.
    """
    from moto.emr.models import ElasticMapReduceBackend

    original = ElasticMapReduceBackend.describe_step
    transitions: list[tuple[str, str]] = []

    def describe_step(self, cluster_id: str, step_id: str):
        step = original(self, cluster_id, step_id)
        if step is not None and step.state in ("PENDING", "RUNNING"):
            step.state = _NEXT_STATE.get(step.state, final_state)
            transitions.append((step_id, step.state))
        return step

    ElasticMapReduceBackend.describe_step = describe_step
    try:
        yield transitions
    finally:
        ElasticMapReduceBackend.describe_step = original
