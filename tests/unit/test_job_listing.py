"""The job store at research scale (issue #28): a runtime reloads 10,000 job records, and ListJobs
pages through them newest first, each page reading only its own records, not all of them."""
from __future__ import annotations

import json

import pytest

from services.common.contract.errors import ValidationError
from services.common.jobs.record import JOBS_BUCKET, EventType, JobRecord, JobState
from services.common.jobs.runtime import JobRuntime

N = 10_000


class CountingJobs(dict):
    """The runtime's job table, counting the records a listing reads."""
    reads = 0

    def __getitem__(self, key):
        CountingJobs.reads += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        CountingJobs.reads += 1
        return super().get(key, default)

    def values(self):
        CountingJobs.reads += len(self)
        return super().values()

    def __iter__(self):
        CountingJobs.reads += len(self)
        return super().__iter__()


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    from services.common.storage.store import LocalStore
    store = LocalStore(tmp_path_factory.mktemp("listing") / "storage")
    store.ensure_buckets()
    folder = store.root / JOBS_BUCKET / "svc"
    folder.mkdir(parents=True)
    rec = JobRecord(job_id="x", service="svc", kind="k", spec={"i": 0}, config={"i": 0})
    rec.add_event(EventType.STATE, "QUEUED")
    rec.transition(JobState.RUNNING)
    rec.transition(JobState.SUCCEEDED)
    template = json.loads(rec.to_json())
    # written in an order unrelated to age: the listing's order comes from created_at, not storage
    for i in sorted(range(N), key=lambda i: (i * 7919) % N):
        d = dict(template, job_id=f"k-{i:05d}", created_at=1_000_000.0 + i, request_id=f"r-{i}",
                 state="FAILED" if i % 100 == 0 else "SUCCEEDED")
        (folder / f"k-{i:05d}.json").write_text(json.dumps(d))
    rt = JobRuntime("svc", store, {"k": "tests.recipes:sleepy"})
    with rt._cond:  # what start() does first
        rt._recover()
    return rt


def test_ten_thousand_records_reload_and_page_newest_first_with_none_lost(reloaded):
    assert len(reloaded._jobs) == N
    seen, token = [], ""
    while True:
        page, token = reloaded.list(page_size=500, page_token=token)
        seen += [r.job_id for r in page]
        if not token:
            break
    assert seen == [f"k-{i:05d}" for i in reversed(range(N))]
    failed, token = reloaded.list({JobState.FAILED}, page_size=30)
    assert [r.job_id for r in failed] == [f"k-{i:05d}" for i in reversed(range(0, N, 100))][:30] and token
    with pytest.raises(ValidationError):
        reloaded.list(page_token="k-nope")


def test_a_page_reads_only_its_own_records(reloaded, monkeypatch):
    monkeypatch.setattr(reloaded, "_jobs", CountingJobs(reloaded._jobs))
    CountingJobs.reads = 0
    page, token = reloaded.list(page_size=50, page_token="k-05000")
    assert [r.job_id for r in page] == [f"k-{i:05d}" for i in range(4999, 4949, -1)] and token == "k-04950"
    assert CountingJobs.reads <= 52  # the token's record, the page and one to know a next page exists
    assert all(r.events == [] for r in page)  # a listing carries no event history
