"""The daily DAG's timetable: a cron data interval whose run id names the day it processes.

Airflow 3's `CronDataIntervalTimetable` already gives the right day: the run of an interval
starts when the interval ends, and its logical date is the interval's start (so `ds` is the day
that has ended). But it names scheduled runs after the moment they may start
(`scheduled__<run_after>`), i.e. the next day. This subclass names them after the interval's
start, so the run id, `ds`, the UI's logical date and the manifest all name the same day:
`scheduled__2025-03-01T00:00:00+00:00` processes 2025-03-01.

It is registered by the `churn` Airflow plugin (`plugins/churn_plugin.py`); the scheduler and
the dag-processor deserialize it from there.
"""

from __future__ import annotations

from typing import Any

from airflow.timetables.interval import CronDataIntervalTimetable


class DayIntervalTimetable(CronDataIntervalTimetable):
    """`CronDataIntervalTimetable` with run ids named after the start of the data interval.

    :param cron: the cron expression (or preset, e.g. `@daily`) of the runs.
    :param timezone: the time zone of the cron, e.g. `UTC`.
    """

    def generate_run_id(self, *, run_type: Any, run_after: Any, data_interval: Any,
                        **extra: Any) -> str:
        """`<run type>__<interval start>`; without an interval, Airflow's own id."""
        if data_interval is None:
            return super().generate_run_id(run_type=run_type, run_after=run_after,
                                           data_interval=data_interval, **extra)
        return run_type.generate_run_id(suffix=data_interval.start.isoformat())
