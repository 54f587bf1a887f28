"""Prometheus text-format counters and histograms, without extra dependencies."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(d: dict) -> str:
    if not d:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in d.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.start = time.time()
        self.requests: dict[tuple, int] = defaultdict(int)
        self.hist: dict[tuple, list] = {}
        self.predictions: dict[tuple, int] = defaultdict(int)
        self.input_errors: dict[tuple, int] = defaultdict(int)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            h = self.hist.setdefault((method, route), [[0] * len(BUCKETS), 0, 0.0])
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[0][i] += 1
            h[1] += 1
            h[2] += seconds

    def observe_prediction(self, model: str, label: str | None, abstain: bool) -> None:
        with self._lock:
            self.predictions[(model, str(label), "true" if abstain else "false")] += 1

    def observe_input_error(self, status: int) -> None:
        with self._lock:
            self.input_errors[(str(status),)] += 1

    def render(self, gauges: dict[str, float] | None = None) -> str:
        out = []
        with self._lock:
            out += ["# HELP privmed_requests_total HTTP requests by method, route and status.",
                    "# TYPE privmed_requests_total counter"]
            for (m, r, s), v in sorted(self.requests.items()):
                out.append(f"privmed_requests_total{_labels({'method': m, 'route': r, 'status': s})} {v}")
            out += ["# HELP privmed_request_duration_seconds Request latency.",
                    "# TYPE privmed_request_duration_seconds histogram"]
            for (m, r), (counts, n, total) in sorted(self.hist.items()):
                for b, c in zip(BUCKETS, counts):
                    out.append(f"privmed_request_duration_seconds_bucket"
                               f"{_labels({'method': m, 'route': r, 'le': b})} {c}")
                out.append(f"privmed_request_duration_seconds_bucket{_labels({'method': m, 'route': r, 'le': '+Inf'})} {n}")
                out.append(f"privmed_request_duration_seconds_sum{_labels({'method': m, 'route': r})} {total:.6f}")
                out.append(f"privmed_request_duration_seconds_count{_labels({'method': m, 'route': r})} {n}")
            out += ["# HELP privmed_predictions_total Images classified, by model, label and abstention.",
                    "# TYPE privmed_predictions_total counter"]
            for (mo, la, ab), v in sorted(self.predictions.items()):
                out.append(f"privmed_predictions_total{_labels({'model': mo, 'label': la, 'abstain': ab})} {v}")
            out += ["# HELP privmed_rejected_inputs_total Uploads refused with a 4xx, by status.",
                    "# TYPE privmed_rejected_inputs_total counter"]
            for (s,), v in sorted(self.input_errors.items()):
                out.append(f"privmed_rejected_inputs_total{_labels({'status': s})} {v}")
        out += ["# HELP privmed_uptime_seconds Seconds since the server started.",
                "# TYPE privmed_uptime_seconds gauge", f"privmed_uptime_seconds {time.time() - self.start:.3f}"]
        for name, v in (gauges or {}).items():
            out += [f"# TYPE {name} gauge", f"{name} {v}"]
        return "\n".join(out) + "\n"
