"""Evaluator gRPC service: validate an EvaluateSpec, queue it, delegate the rest to the job runtime."""
from __future__ import annotations

from services.common.generated.ftlab.v1 import evaluator_pb2_grpc
from services.common.job_service import JobMethods, spec_to_dict
from services.common.service import ServiceDef, main
from services.evaluator.spec import resolve_evaluate_spec


class EvaluatorServicer(JobMethods, evaluator_pb2_grpc.EvaluatorServiceServicer):  # JobMethods first: it overrides the stubs
    def __init__(self, runtime, store):
        self.runtime, self.store = runtime, store

    def SubmitEvaluate(self, request, context):
        spec = spec_to_dict(request.spec)
        rec = self.runtime.submit("evaluate", spec, lambda: resolve_evaluate_spec(spec, self.store), request.request_id)
        return self.job_proto(rec)


SERVICE = ServiceDef(name="evaluator", full_name="ftlab.v1.EvaluatorService", servicer=EvaluatorServicer,
                     add_to_server=evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server,
                     recipes={"evaluate": "services.evaluator.recipe:run"})

if __name__ == "__main__":
    main(SERVICE)
