"""Prefect tasks wrapping nvila_model stage functions, with MLflow tracking."""
