"""Trainer gRPC service: validate a TrainSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import trainer_pb2_grpc
from services.common.job_service import JobMethods, spec_to_dict
from services.common.service import ServiceDef, main
from services.trainer.spec import resolve_train_spec


class TrainerServicer(JobMethods, trainer_pb2_grpc.TrainerServiceServicer):  # JobMethods first: it overrides the stubs
    def __init__(self, runtime, store):
        self.runtime, self.store = runtime, store

    def SubmitTrain(self, request, context):
        spec = spec_to_dict(request.spec)
        rec = self.runtime.submit("train", spec, lambda: resolve_train_spec(spec, self.store), request.request_id)
        return self.job_proto(rec)

    def job_proto(self, rec):
        """Every Job carries the memory estimate made at submit, from its first answer on."""
        job = super().job_proto(rec)
        if rec.config.get("memory_estimate_gb") and "memory_estimate_gb" not in job.metrics:
            job.metrics["memory_estimate_gb"] = rec.config["memory_estimate_gb"]
        return job


SERVICE = ServiceDef(name="trainer", full_name="ftlab.v1.TrainerService", servicer=TrainerServicer,
                     add_to_server=trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                     recipes={"train": "services.trainer.recipe:run"})

if __name__ == "__main__":
    main(SERVICE)
