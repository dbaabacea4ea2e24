"""Airflow extensions of the churn pipeline."""
