"""Evaluator gRPC service: validate an EvaluateSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import evaluator_pb2_grpc
from services.common.rpc.job_servicer import JobMethods
from services.common.rpc.service import ServiceDef, main
from services.evaluator.config import resolve_evaluate_spec


# JobMethods comes first: its job RPCs override the generated stubs' UNIMPLEMENTED ones.
class EvaluatorServicer(JobMethods, evaluator_pb2_grpc.EvaluatorServiceServicer):
    def SubmitEvaluate(self, request, context):
        return self.submit("evaluate", request, resolve_evaluate_spec)


SERVICE = ServiceDef(name="evaluator", full_name="ftlab.v1.EvaluatorService", servicer=EvaluatorServicer,
                     add_to_server=evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server,
                     recipes={"evaluate": "services.evaluator.recipe:run"},
                     # imported inside the recipe's functions (not vLLM: its engine starts per job);
                     # the architectures of Qwen3 and SmolLM2
                     warm_imports=("peft", "safetensors.torch", "transformers.models.qwen3.modeling_qwen3", "transformers.models.llama.modeling_llama"))

if __name__ == "__main__":
    main(SERVICE)
