"""Prefect flows: orchestration only; every task is one call into the `anomaly` library."""
