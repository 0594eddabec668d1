"""A flow run in MLflow: one parent run in the experiment's MLflow experiment, opened when the flow
starts, under which its jobs' runs are nested (``mlflow.parentRunId``) as they start, so a
researcher watching a Phase in the UI sees its jobs grouped live. The jobs' runs are opened by the
services' trackers (:mod:`services.common.tracking.tracker`); the flow only knows its steps'
request ids, so a background thread adopts, every few seconds, the runs of the experiment that
carry one of them (or a retry's) and started after the flow did. At the end every step's job (reused ones too)
is adopted by its job id, the step counts and the report's URI are logged and the parent run ends.

Nothing here can fail or slow the flow: MLflow is reached only from that thread and from
:meth:`FlowRunTracker.finish`; an unreachable tracker is logged once and the flow goes on."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

from services.common.tracking.tracker import FLUSH_S, client, experiment_id, find_run

log = logging.getLogger("ftlab.tracking")

NOT_DONE = ("failed", "blocked", "cancelled")


class FlowRunTracker:
    def __init__(self, experiment: str, flow_run_id: str, request_ids: Iterable[str], started_at: float,
                 uri: str | None = None):
        from services.common.contract.settings import tracking_uri
        self.experiment, self.flow_run_id, self.started_at = experiment, flow_run_id, started_at
        self.request_ids = set(request_ids)
        self.uri = tracking_uri() if uri is None else uri
        self.parent_id: str | None = None
        self._c = None
        self._adopted: set[str] = set()   # job runs already under the parent
        self._stop = threading.Event()
        self._down_logged = False
        self._thread: threading.Thread | None = None
        if self.uri:
            self._thread = threading.Thread(target=self._loop, name=f"flow-tracking-{flow_run_id}", daemon=True)
            self._thread.start()

    # -- the background thread: the parent run at once, then the jobs' runs as they appear

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._try(self._adopt_new)
            self._stop.wait(FLUSH_S)

    def _try(self, fn, *args) -> bool:
        try:
            if self._c is None:
                self._c = client(self.uri)
            if self.parent_id is None:
                self._open()
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the flow's result stands without its tracker
            if not self._down_logged:
                self._down_logged = True
                log.warning("tracking: flow run %s of %s not grouped in MLflow at %s (retried): %s: %s",
                            self.flow_run_id, self.experiment, self.uri, type(exc).__name__, str(exc)[:300])
            return False
        return True

    def _open(self) -> None:
        """The flow run's parent run, found again when a flow run is resumed under the same id."""
        c = self._c
        parent = find_run(c, f"tags.`ftlab.flow_run` = '{self.flow_run_id}' and tags.`ftlab.kind` = 'flow' "
                             f"and tags.`ftlab.experiment` = '{self.experiment}'")
        if parent is None:
            parent = c.create_run(experiment_id(c, self.experiment), start_time=int(self.started_at * 1000),
                                  run_name=f"{self.experiment} {self.flow_run_id}",
                                  tags={"ftlab.kind": "flow", "ftlab.flow_run": self.flow_run_id,
                                        "ftlab.experiment": self.experiment,
                                        "mlflow.note.content": f"ftlab flow run `{self.flow_run_id}` of "
                                                               f"experiment `{self.experiment}`"})
        self.parent_id = parent.info.run_id

    def _adopt(self, run_id: str) -> None:
        self._c.set_tag(run_id, "mlflow.parentRunId", self.parent_id)
        self._c.set_tag(run_id, "ftlab.flow_run", self.flow_run_id)
        self._adopted.add(run_id)

    def _ours(self, request_id: str) -> bool:
        """A step's request id, or a retry of it (``<id>:attempt-N``: ``ServiceClient.submit_fresh``)."""
        return request_id.partition(":attempt-")[0] in self.request_ids

    def _adopt_new(self) -> None:
        """This flow's jobs' runs that started since the flow did and are not nested yet."""
        c = self._c
        since = int(self.started_at * 1000) - 1000
        exp = c.get_experiment_by_name(self.experiment)
        if exp is None:
            return
        token = None
        while True:
            page = c.search_runs([exp.experiment_id], f"attributes.start_time >= {since}", max_results=1000,
                                 page_token=token)
            for run in page:
                rid = run.info.run_id
                if (rid not in self._adopted and rid != self.parent_id
                        and self._ours(run.data.tags.get("ftlab.request_id", ""))):
                    self._adopt(rid)
            token = page.token
            if not token:
                return

    # -- the flow's end

    def finish(self, steps: list[dict[str, Any]], report_uri: str = "", status: str | None = None) -> str | None:
        """Every step's job under the parent (by job id: a reused job too), the step counts and the
        report's URI on it, and the parent ended (FAILED when a step was not done, or ``status``:
        ``KILLED`` for an interrupted flow). Returns the parent's run id, None when off or unreachable."""
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join(15.0)

        def end() -> None:
            from mlflow.entities import Metric, RunTag
            jobs = 0
            for step in steps:
                run = find_run(self._c, f"tags.`ftlab.job_id` = '{step['job_id']}'") if step.get("job_id") else None
                if run is not None:
                    if run.info.run_id not in self._adopted:
                        self._adopt(run.info.run_id)
                    jobs += 1
            counts: dict[str, int] = {}
            for step in steps:
                counts[step["status"]] = counts.get(step["status"], 0) + 1
            now = int(time.time() * 1000)
            tags = [RunTag("ftlab.report", report_uri),
                    RunTag("mlflow.note.content", f"ftlab flow run `{self.flow_run_id}` of experiment "
                                                  f"`{self.experiment}`; report: {report_uri}")] if report_uri else []
            self._c.log_batch(self.parent_id, tags=tags,
                              metrics=[Metric(f"steps_{k}", float(v), now, 0) for k, v in counts.items()]
                              + [Metric("jobs_tracked", float(jobs), now, 0)])
            bad = any(counts.get(k) for k in NOT_DONE)
            self._c.set_terminated(self.parent_id, status or ("FAILED" if bad else "FINISHED"))

        self._down_logged = False  # a last try, logged if it fails
        return self.parent_id if self._try(end) else None
