"""Prometheus metrics for the server (prometheus-client), on their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("livescope_frames_received", "Frames accepted", ["mode"], registry=r)
        self.results = Counter("livescope_results", "Results sent", ["model"], registry=r)
        self.errors = Counter("livescope_errors", "Messages refused or failed", ["code"], registry=r)
        self.dropped = Counter("livescope_frames_dropped", "Frames dropped, counted and reported",
                               ["reason"], registry=r)
        self.undelivered = Counter("livescope_messages_undelivered",
                                   "Answers and publications a peer could not take (not reading, gone, "
                                   "too slow), counted", ["reason"], registry=r)
        self.out_of_domain = Counter("livescope_out_of_domain_frames",
                                     "Frames unlike the model's training data (their results say why)",
                                     ["model"], registry=r)
        self.focus_alarms = Counter("livescope_focus_alarms",
                                    "Frames out of focus, their results say why: by a psf model's reading (source: "
                                    "the model), or by the acquisition's autofocus (source: acquisition)",
                                    ["source"], registry=r)
        self.duplicates = Counter("livescope_frames_duplicate", "Resent frames de-duplicated",
                                  registry=r)
        self.inference = Histogram("livescope_inference_seconds", "Inference time per batch",
                                   ["model"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.total = Histogram("livescope_server_latency_seconds", "Receipt to result",
                               buckets=_LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("livescope_batch_frames", "Frames per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue_depth = Gauge("livescope_queue_depth", "Frames waiting for inference", registry=r)
        self.provider = Gauge("livescope_execution_provider", "1 for the provider in use",
                              ["model", "provider"], registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
