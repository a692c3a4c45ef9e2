"""What operators see: Prometheus metrics, structured logs, progress lines."""
