"""MFU's FLOP accounting (services/common/torch_utils/mfu.py) against torch's own FLOP counter
(torch.utils.flop_counter.FlopCounterMode) on the tiny Qwen3, and the measured matmul peak."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from services.common.torch_utils import mfu


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    return model, json.loads((tiny_model_dir / "config.json").read_text())


def test_matmul_params_are_the_models_linear_weights(tiny):
    model, config = tiny
    p = mfu.matmul_params(config)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    assert p["body"] == linear
    assert p["head"] == model.lm_head.weight.numel()


@pytest.mark.parametrize("full", [True, False])
def test_flops_match_torchs_flop_counter(tiny, full):
    model, config = tiny
    T = 24
    ids = torch.randint(0, 1000, (1, T))
    with FlopCounterMode(display=False) as fwd:
        model(ids)
    # forward, full logits: T*(2*body + 2*head) + attention 4*L*d_attn*T per token
    assert fwd.get_total_flops() == pytest.approx(mfu.generation_flops(config, T, 0, T) + T * 2 * mfu.matmul_params(config)["head"], rel=0.01)
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(full)  # frozen weights (adapters' base): no weight gradients
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # gradients still flow
    with FlopCounterMode(display=False) as both:
        model(inputs_embeds=embeds, labels=ids).loss.backward()
    for p in model.parameters():
        p.requires_grad_(True)
    expected = mfu.training_flops(config, T, T, T, full=full)
    assert both.get_total_flops() == pytest.approx(expected, rel=0.05)


def test_matmul_peak_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_CACHE_DIR", str(tmp_path))
    mfu.matmul_peak_gflops.cache_clear()
    peak = mfu.matmul_peak_gflops("float32", 1, "cpu", 256)
    assert peak > 0.1
    stored = json.loads((tmp_path / "matmul_peak.json").read_text())
    assert [v["gflops"] for v in stored.values()] == [peak]
    out = mfu.mfu(2 * 256**3 * 10, 10 * 2 * 256**3 / (peak * 1e9) * 2, "float32")  # half the peak's speed
    assert out["achieved_gflops"] == pytest.approx(peak / 2, rel=0.01)


def test_a_low_or_old_cached_peak_is_measured_again_and_the_best_kept(tmp_path, monkeypatch):
    """A peak measured under load must not stay the peak (it would inflate every MFU after it)."""
    import time
    monkeypatch.setenv("FTLAB_CACHE_DIR", str(tmp_path))
    key = f"{mfu._machine('cpu')}|cpu|float32|1|64"
    cache = tmp_path / "matmul_peak.json"
    measured = iter([50.0, 20.0])
    monkeypatch.setattr(mfu, "_measure", lambda *a: next(measured))

    cache.write_text(json.dumps({key: 10.0}))        # the earlier layout: a bare value, time unknown
    mfu.matmul_peak_gflops.cache_clear()
    assert mfu.matmul_peak_gflops("float32", 1, "cpu", 64) == 50.0   # measured again, the better one kept

    entry = json.loads(cache.read_text())[key]
    entry["measured_at"] = time.time() - mfu.REMEASURE_AFTER_S - 1  # a day old: measured again
    cache.write_text(json.dumps({key: entry}))
    mfu.matmul_peak_gflops.cache_clear()
    assert mfu.matmul_peak_gflops("float32", 1, "cpu", 64) == 50.0   # 20 measured, 50 is still the best
    assert json.loads(cache.read_text())[key]["last_measured_gflops"] == 20.0

    mfu.matmul_peak_gflops.cache_clear()                              # fresh: trusted, not measured
    monkeypatch.setattr(mfu, "_measure", lambda *a: pytest.fail("a fresh cached peak was measured again"))
    assert mfu.matmul_peak_gflops("float32", 1, "cpu", 64) == 50.0
