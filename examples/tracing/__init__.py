"""Tracing example: a run's spans, exported to the console."""
