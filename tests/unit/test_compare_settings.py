"""``ftlab compare`` says when two evaluations were generated under different settings."""
from services.evaluator.compare import format_table, setting_differences


def _metrics(**spec):
    return {"spec": {"max_new_tokens": 1000, "batch_size": 8, **spec}, "hardware": {"dtype": "bfloat16"}}


def test_same_settings_and_defaults_spelled_out_are_no_difference():
    assert setting_differences(_metrics(), _metrics(engine="hf", kv_cache_dtype="auto")) == []


def test_every_differing_generation_setting_is_named():
    a = _metrics()
    b = _metrics(max_new_tokens=8, kv_cache_dtype="int4")
    b["hardware"]["dtype"] = "float32"
    assert setting_differences(a, b) == [
        {"setting": "max_new_tokens", "a": 1000, "b": 8},
        {"setting": "kv_cache_dtype", "a": "auto", "b": "int4"},
        {"setting": "dtype", "a": "bfloat16", "b": "float32"}]


def test_the_table_warns():
    result = {"a": "m/e1", "b": "m/e2", "resamples": 10, "seed": 0, "tasks": {},
              "settings_differ": [{"setting": "max_new_tokens", "a": 1000, "b": 8}]}
    assert "warning: generated with different max_new_tokens (A 1000, B 8)" in format_table(result)


def test_both_references_are_checked_at_once_and_a_missing_one_lists_its_models_evaluations(tmp_path):
    import pytest

    from services.common.contract.errors import NotFoundError, ValidationError
    from services.common.storage.store import LocalStore
    from services.evaluator.compare import compare
    store = LocalStore(tmp_path)
    store.ensure_buckets()
    store.put_bytes("evaluations", "m/e1/manifest.json", b"{}")
    with pytest.raises(ValidationError) as exc:  # the second bad reference used to go unreported
        compare(store, "foo", "bar")
    assert [x.split(":")[0] for x in exc.value.problems] == ["'foo'", "'bar'"]
    with pytest.raises(NotFoundError) as exc:
        compare(store, "m/e2", "n/e1")
    assert "m has: e1" in str(exc.value) and "no evaluation of 'n' in storage" in str(exc.value)
