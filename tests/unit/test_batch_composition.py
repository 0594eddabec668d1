"""INT8/4-bit batch dependence (issue 14, fault 4): metrics.json says whether batch composition can
change a model's outputs, why, and that ``batch_size: 1`` is the exact mode. The rates behind it are
measured on the real model by ``bench/bench_batch_invariance.py`` (docs/EVALUATOR.md)."""
from __future__ import annotations

from services.evaluator.generation import batch_composition
from services.evaluator.config import resolve_evaluate_spec


def test_int8_batches_are_flagged_and_batch_size_one_is_exact():
    int8 = batch_composition({"method": "INT8", "quant_tag": "Int8_BnB"}, 8)
    assert int8["outputs_may_depend_on_batch"] and int8["effect"] == "int8_outlier_columns"
    assert not int8["exact"] and int8["exact_mode"] == {"batch_size": 1} and "LLM.int8" in int8["note"]
    nf4 = batch_composition({"method": "BNB4BIT"}, 8)
    assert nf4["effect"] == "float_rounding" and "4-bit" in nf4["note"] and nf4["outputs_may_depend_on_batch"]
    for method in ("INT8", "BNB4BIT", "NoQuant"):
        alone = batch_composition({"method": method}, 1)
        assert alone["exact"] and not alone["outputs_may_depend_on_batch"] and alone["effect"] == "none"


def test_batch_size_one_is_accepted_at_the_door(store):
    import tempfile
    from pathlib import Path

    from services.common.storage import artifacts
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text("{}")
        artifacts.commit_dir(store, "models", "m", d, {"kind": "quantized"})
        Path(d, "test.parquet").write_text("x")
        artifacts.commit_dir(store, "datasets", "arc", d, {"task": "ai2_arc", "splits": {
            "test": {"rows": 4, "columns": ["id", "question", "answer"]}}})
    cfg = resolve_evaluate_spec({"model": "m", "tasks": [{"task": "arc"}], "batch_size": 1}, store)
    assert cfg["batch_size"] == 1
