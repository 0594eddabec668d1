"""BRECQ (block reconstruction): in the study's vocabulary, refused at the door with the alternatives."""
from __future__ import annotations

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, register_ptq_method
from services.quantizer.ptq.adaround import NO_ROUNDING_LIB

register_ptq_method(PtqMethod(
    "brecq", "", (4, 8), 16, {"brecq": quant_method("BRECQ")}, study_tag=True,
    unavailable="BRECQ: " + NO_ROUNDING_LIB, summary="BRECQ (block reconstruction): not available", order=6))
