"""Quantizer gRPC service: validate a QuantizeSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import quantizer_pb2_grpc
from services.common.job_service import JobMethods, spec_to_dict
from services.common.service import ServiceDef, main
from services.quantizer.spec import resolve_quantize_spec


class QuantizerServicer(JobMethods, quantizer_pb2_grpc.QuantizerServiceServicer):  # JobMethods first: it overrides the stubs
    def __init__(self, runtime, store):
        self.runtime, self.store = runtime, store

    def SubmitQuantize(self, request, context):
        spec = spec_to_dict(request.spec)
        rec = self.runtime.submit("quantize", spec, lambda: resolve_quantize_spec(spec, self.store), request.request_id)
        return self.job_proto(rec)


SERVICE = ServiceDef(name="quantizer", full_name="ftlab.v1.QuantizerService", servicer=QuantizerServicer,
                     add_to_server=quantizer_pb2_grpc.add_QuantizerServiceServicer_to_server,
                     recipes={"quantize": "services.quantizer.recipe:run"})

if __name__ == "__main__":
    main(SERVICE)
