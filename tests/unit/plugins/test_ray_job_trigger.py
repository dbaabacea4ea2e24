"""RayJobTrigger serialization: exact classpath and kwargs, and a faithful round trip."""

from __future__ import annotations

from airflow.sdk.module_loading import import_string

from churn_airflow.triggers.ray_job import RayJobTrigger

SUBMISSION_ID = "af-churn_daily-train-0123456789abcdef"
CONN_ID = "ray_default"
DEADLINE = 1_795_780_000.5


class TestRayJobTrigger:
    def test_serialize_exact_classpath_and_kwargs(self):
        trigger = RayJobTrigger(submission_id=SUBMISSION_ID, ray_conn_id=CONN_ID,
                                poll_interval=2.5, log_offset=120, deadline=DEADLINE,
                                stop_on_kill=False)
        classpath, kwargs = trigger.serialize()
        assert classpath == "churn_airflow.triggers.ray_job.RayJobTrigger"
        assert kwargs == {
            "submission_id": SUBMISSION_ID,
            "ray_conn_id": CONN_ID,
            "poll_interval": 2.5,
            "log_offset": 120,
            "deadline": DEADLINE,
            "stop_on_kill": False,
        }

    def test_serialize_round_trips(self):
        classpath, kwargs = RayJobTrigger(submission_id=SUBMISSION_ID).serialize()
        rebuilt = import_string(classpath)(**kwargs)
        assert type(rebuilt) is RayJobTrigger
        assert rebuilt.serialize() == (classpath, kwargs)
        assert kwargs == {"submission_id": SUBMISSION_ID, "ray_conn_id": "ray_default",
                          "poll_interval": 5.0, "log_offset": 0, "deadline": None,
                          "stop_on_kill": True}

    def test_event_payload_is_success_only_for_succeeded(self):
        trigger = RayJobTrigger(submission_id=SUBMISSION_ID)
        assert trigger._event("SUCCEEDED", 10, timed_out=False)["status"] == "success"
        assert trigger._event("FAILED", 10, timed_out=False)["status"] == "error"
        assert trigger._event("STOPPED", 10, timed_out=True) == {
            "status": "error", "submission_id": SUBMISSION_ID, "job_status": "STOPPED",
            "log_offset": 10, "timed_out": True}
