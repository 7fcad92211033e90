"""What a consumer tells the outside: Prometheus metrics, OpenTelemetry tracing, processing-time
summaries, and the small HTTP server for ``/metrics``, ``/healthz``, ``/readyz``. Nothing here
changes what happens to a message.
"""
