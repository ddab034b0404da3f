"""Prefect flows composing the pipeline tasks."""
