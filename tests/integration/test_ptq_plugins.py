"""The PTQ method added as one plugin file (services/quantizer/ptq/w8a16.py), run for real on the
tiny Qwen3 through its quantize hook: int8 per-channel weights saved as compressed-tensors, loaded
back by plain from_pretrained, close to the source, named W8A16_RTN; the door takes it without a
dataset (calibration-free)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from services.quantizer.config import default_output_name, spec_problems
from services.quantizer.ptq import PTQ_METHODS


def test_w8a16_quantizes_and_reloads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from services.common.torch_utils import modeling
    method = PTQ_METHODS["w8a16"]
    cfg = SimpleNamespace(method="w8a16", options={}, weights_bits=8, algorithm="rtn", calibration=None)
    ctx = SimpleNamespace(log=lambda message: None)
    out = tmp_path / "out"
    method.quantize(ctx, cfg, tiny_model_dir, out, modeling.load_tokenizer(tiny_model_dir), [],
                    torch.device("cpu"), torch.float32)
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors"
    weights = next(iter(qcfg["config_groups"].values()))["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["symmetric"]) == (8, "channel", True)
    assert "lm_head" in qcfg["ignore"]
    ids = torch.tensor([[9707, 11, 1879, 0, 25, 220, 16, 10, 16, 28]])
    with torch.no_grad():
        src = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(input_ids=ids).logits
        q = AutoModelForCausalLM.from_pretrained(out, device_map={"": "cpu"})(input_ids=ids).logits.float()
    assert 0 < (q - src).abs().max() < 0.05 * src.abs().max()  # quantized, and int8 per channel is close
    assert spec_problems({"source_model": "M", "method": "w8a16"}) == [] and not method.calibrated
    assert default_output_name({"source_model": "M_NoQuant", "method": "w8a16"}) == "M_W8A16_RTN"
