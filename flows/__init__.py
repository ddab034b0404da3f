"""Prefect flows composing the pipeline tasks."""

from tasks.env import configure

configure()
