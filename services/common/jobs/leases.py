"""Leases: one replica runs a job. Replicas of a service may share one store; a job runs only where
its lease object (``jobs/leases/<service>/<job_id>``) was created. The owner renews it while the job
runs, and a lease not renewed for ``ttl_s`` seconds may be taken over (its owner died)."""
from __future__ import annotations

import json
import logging
import time

from services.common.contract.errors import FtlabError, NotFoundError
from services.common.jobs.record import JOBS_BUCKET
from services.common.storage.store import ObjectStore

log = logging.getLogger("ftlab.runtime")


class Leases:
    """The leases of one replica (``owner``) of ``service`` in ``store``'s jobs bucket."""

    def __init__(self, store: ObjectStore, service: str, owner: str, ttl_s: float):
        self.store, self.service, self.owner, self.ttl_s = store, service, owner, ttl_s

    def _key(self, job_id: str) -> str:
        return f"leases/{self.service}/{job_id}"

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s}).encode()

    def _read(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(JOBS_BUCKET, self._key(job_id)))
        except NotFoundError:
            return None

    def held_elsewhere(self, job_id: str) -> bool:
        """Another owner holds an unexpired lease on the job."""
        lease = self._read(job_id)
        return bool(lease) and lease.get("owner") != self.owner and lease.get("expires_at", 0) > time.time()

    def claim(self, job_id: str) -> bool:
        """Create the lease (conditional write); an expired lease is deleted and the create retried
        once. Two replicas taking over the same expired lease at the same instant could both delete
        and one re-create: the re-read after creating catches all but a sub-millisecond window."""
        for _ in range(2):
            if self.store.put_if_absent(JOBS_BUCKET, self._key(job_id), self._body()):
                lease = self._read(job_id)
                return bool(lease) and lease.get("owner") == self.owner
            lease = self._read(job_id)
            if lease is None:
                continue
            if lease.get("owner") == self.owner:
                self.renew(job_id)
                return True
            if lease.get("expires_at", 0) > time.time():
                return False
            log.warning("job %s: taking over the expired lease of %s", job_id, lease.get("owner"),
                        extra={"job_id": job_id})
            self.store.delete(JOBS_BUCKET, self._key(job_id))
        return False

    def renew(self, job_id: str) -> None:
        """Push the expiry ``ttl_s`` ahead; a storage error is logged, not raised (the next beat retries)."""
        try:
            self.store.put_bytes(JOBS_BUCKET, self._key(job_id), self._body())
        except FtlabError as exc:
            log.warning("job %s: could not renew its lease: %s", job_id, exc, extra={"job_id": job_id})

    def release(self, job_id: str) -> None:
        """Delete the lease if this owner holds it."""
        lease = self._read(job_id)
        if lease and lease.get("owner") == self.owner:
            self.store.delete(JOBS_BUCKET, self._key(job_id))


class NoLeases:
    """Where Ray places jobs (services/common/jobs/ray_placement.py) there are no lease objects: a job's
    running attempt is one named Ray actor, and a service restart finds it by that name."""

    def held_elsewhere(self, job_id: str) -> bool:
        return False

    def claim(self, job_id: str) -> bool:
        return True

    def renew(self, job_id: str) -> None:
        pass

    def release(self, job_id: str) -> None:
        pass
