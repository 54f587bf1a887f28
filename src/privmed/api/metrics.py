"""Prometheus metrics (``prometheus_client``), in two registries.

Open (``GET /metrics``): liveness and aggregates only: requests by method/route/status, latency,
uptime, models loaded. Per-label prediction counts are NOT there: polling them before and after one
request reveals that request's diagnosis. They are in the private registry, served by
``GET /v1/metrics`` to the auditor and admin roles.
"""
from __future__ import annotations

import time

# CONTENT_TYPE_LATEST is re-exported for the server
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, models_loaded=lambda: 0):
        self.public, self.private = CollectorRegistry(), CollectorRegistry()
        self.requests = Counter("privmed_requests", "HTTP requests by method, route and status.",
                                ("method", "route", "status"), registry=self.public)
        self.latency = Histogram("privmed_request_duration_seconds", "Request latency.", ("method", "route"),
                                 buckets=BUCKETS, registry=self.public)
        start = time.time()
        Gauge("privmed_uptime_seconds", "Seconds since the server started.",
              registry=self.public).set_function(lambda: time.time() - start)
        Gauge("privmed_models_loaded", "Bundles loaded and verified.",
              registry=self.public).set_function(lambda: float(models_loaded()))
        self.input_errors = Counter("privmed_rejected_inputs", "Uploads refused with a 4xx, by status.",
                                    ("status",), registry=self.public)
        self.predictions = Counter("privmed_predictions", "Images classified, by model, label and abstention.",
                                   ("model", "label", "abstain"), registry=self.private)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_prediction(self, model: str, label: str | None, abstain: bool) -> None:
        self.predictions.labels(model, str(label), "true" if abstain else "false").inc()

    def observe_input_error(self, status: int) -> None:
        self.input_errors.labels(str(status)).inc()

    def render(self, private: bool = False) -> str:
        return generate_latest(self.private if private else self.public)
