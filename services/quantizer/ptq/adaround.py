"""AdaRound (learned rounding): in the study's vocabulary, refused at the door with the alternatives."""
from __future__ import annotations

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, register_ptq_method

NO_ROUNDING_LIB = ("no maintained library implements it for causal language models on CPU and GPU "
                   "(see docs/QUANTIZER.md); use gptq (error-compensating rounding, the closest), awq or hqq")

register_ptq_method(PtqMethod(
    "adaround", "", (4, 8), 16, {"adaround": quant_method("AdaRound")}, study_tag=True,
    unavailable="AdaRound: " + NO_ROUNDING_LIB, summary="AdaRound (learned rounding): not available", order=5))
