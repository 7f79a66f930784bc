"""Observability beyond /metrics: OpenTelemetry traces (tracing.py)."""
