"""Trainer gRPC service: validate a TrainSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import trainer_pb2_grpc
from services.common.rpc.job_servicer import JobMethods
from services.common.rpc.service import ServiceDef, main
from services.trainer.config import resolve_train_spec


# JobMethods comes first: its job RPCs override the generated stubs' UNIMPLEMENTED ones.
class TrainerServicer(JobMethods, trainer_pb2_grpc.TrainerServiceServicer):
    def SubmitTrain(self, request, context):
        return self.submit("train", request, resolve_train_spec)

    def job_proto(self, rec):
        """Every Job carries the memory estimate made at submit, from its first answer on."""
        job = super().job_proto(rec)
        if rec.config.get("memory_estimate_gb") and "memory_estimate_gb" not in job.metrics:
            job.metrics["memory_estimate_gb"] = rec.config["memory_estimate_gb"]
        return job


SERVICE = ServiceDef(name="trainer", full_name="ftlab.v1.TrainerService", servicer=TrainerServicer,
                     add_to_server=trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                     recipes={"train": "services.trainer.recipe:run"},
                     # imported inside the recipe's functions; the architectures of Qwen3 and SmolLM2
                     warm_imports=("transformers.trainer", "peft", "safetensors.torch",
                                   "transformers.models.qwen3.modeling_qwen3", "transformers.models.llama.modeling_llama"))

if __name__ == "__main__":
    main(SERVICE)
