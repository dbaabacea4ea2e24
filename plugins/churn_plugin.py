"""The `churn` Airflow plugin: registers the daily DAG's timetable with the scheduler."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from churn_airflow.timetables import DayIntervalTimetable


class ChurnPlugin(AirflowPlugin):
    """What Airflow must know of this project beyond its DAG files: custom timetables."""

    name = "churn"
    timetables = [DayIntervalTimetable]
