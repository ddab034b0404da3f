"""Prefect tasks wrapping nvila_model stage functions, with MLflow tracking."""

from tasks.env import configure

configure()
