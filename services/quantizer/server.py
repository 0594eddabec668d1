"""Quantizer gRPC service: validate a QuantizeSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import quantizer_pb2_grpc
from services.common.rpc.job_servicer import JobMethods
from services.common.rpc.service import ServiceDef, main
from services.quantizer.config import resolve_quantize_spec


# JobMethods comes first: its job RPCs override the generated stubs' UNIMPLEMENTED ones.
class QuantizerServicer(JobMethods, quantizer_pb2_grpc.QuantizerServiceServicer):
    def SubmitQuantize(self, request, context):
        return self.submit("quantize", request, resolve_quantize_spec)


SERVICE = ServiceDef(name="quantizer", full_name="ftlab.v1.QuantizerService", servicer=QuantizerServicer,
                     add_to_server=quantizer_pb2_grpc.add_QuantizerServiceServicer_to_server,
                     recipes={"quantize": "services.quantizer.recipe:run"},
                     # imported inside the recipe's functions; the architectures of Qwen3 and SmolLM2
                     warm_imports=("llmcompressor", "compressed_tensors", "peft", "safetensors.torch",
                                   "transformers.models.qwen3.modeling_qwen3", "transformers.models.llama.modeling_llama"))

if __name__ == "__main__":
    main(SERVICE)
