"""Prometheus metrics for one service, read from its job runtime at scrape time (so they can never
drift from what GetJob/ListJobs say). Served over HTTP when FTLAB_METRICS_PORT is set.

Metrics (all labelled ``service``): ``ftlab_queue_length``, ``ftlab_jobs{state}``,
``ftlab_running_jobs``, ``ftlab_job_duration_seconds{kind,state}`` (a histogram of finished jobs,
started -> finished), ``ftlab_gpu_memory_used_bytes{gpu}`` / ``ftlab_gpu_memory_total_bytes{gpu}``
when ``nvidia-smi`` answers (torch-free: the server process never imports CUDA).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from services.common.jobs.record import JobState

log = logging.getLogger("ftlab.metrics")
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600)


def gpu_memory(cache: dict = {}) -> list[tuple[str, int, int]]:  # noqa: B006 - deliberate cache
    """[(gpu index, used bytes, total bytes)] from nvidia-smi, cached 10 s; [] without a GPU."""
    if time.time() - cache.get("t", 0) < 10:
        return cache["v"]
    out: list[tuple[str, int, int]] = []
    if shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                  timeout=5, check=True).stdout
            for line in text.strip().splitlines():
                idx, used, total = (x.strip() for x in line.split(","))
                out.append((idx, int(float(used)) << 20, int(float(total)) << 20))
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.debug("nvidia-smi failed: %s", exc)
    cache.update(t=time.time(), v=out)
    return out


class RuntimeCollector:
    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        rt, svc = self.runtime, self.runtime.service
        with rt._cond:  # one consistent view
            recs = list(rt._jobs.values())
            queued, running = len(rt._queue), len(rt._procs)
        g = GaugeMetricFamily("ftlab_queue_length", "Jobs waiting to start", labels=["service"])
        g.add_metric([svc], queued)
        yield g
        g = GaugeMetricFamily("ftlab_running_jobs", "Job child processes alive", labels=["service"])
        g.add_metric([svc], running)
        yield g
        g = GaugeMetricFamily("ftlab_jobs", "Jobs this service knows, by state", labels=["service", "state"])
        for state in JobState:
            g.add_metric([svc, state.value], sum(r.state is state for r in recs))
        yield g
        h = HistogramMetricFamily("ftlab_job_duration_seconds", "Run time of finished jobs",
                                  labels=["service", "kind", "state"])
        groups: dict[tuple[str, str], list[float]] = {}
        for r in recs:
            if r.state.is_terminal() and r.started_at and r.finished_at:
                groups.setdefault((r.kind, r.state.value), []).append(r.finished_at - r.started_at)
        for (kind, state), ds in sorted(groups.items()):
            buckets = [(str(b), sum(d <= b for d in ds)) for b in DURATION_BUCKETS] + [("+Inf", len(ds))]
            h.add_metric([svc, kind, state], buckets, sum(ds))
        yield h
        gpus = gpu_memory()
        if gpus:
            used = GaugeMetricFamily("ftlab_gpu_memory_used_bytes", "GPU memory in use", labels=["service", "gpu"])
            total = GaugeMetricFamily("ftlab_gpu_memory_total_bytes", "GPU memory", labels=["service", "gpu"])
            for idx, u, t in gpus:
                used.add_metric([svc, idx], u)
                total.add_metric([svc, idx], t)
            yield used
            yield total


def serve_metrics(runtime, port: int, host: str = "0.0.0.0"):
    """Start the /metrics HTTP endpoint; returns (http server, bound port). Port 0 = any free port."""
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(runtime))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
