"""ftlab/, services/common (but modeling) and flows import without torch: the CLI, clients and flows
run on machines without it."""
from __future__ import annotations

import subprocess
import sys

MODULES = ["ftlab.cli", "services.common.rpc.clients", "services.common.jobs.runtime", "services.common.rpc.service",
           "ftlab.stack", "services.common.storage.store", "services.common.storage.s3", "services.common.storage.artifacts",
           "services.common.data.tasks", "services.common.data.importing", "services.common.rpc.job_servicer",
           "services.common.jobs.child", "services.common.jobs.record", "services.common.storage.factory",
           "services.common.jobs.scratch", "ftlab.listing",
           "services.common.rpc.server", "services.common.contract.naming", "services.common.contract.settings",
           "services.trainer.server", "services.quantizer.server", "services.evaluator.server",
           "services.common.rpc.auth", "services.common.rpc.tls", "services.common.rpc.metrics",
           "ftlab.doctor", "services.common.rpc.healthcheck", "services.common.torch_utils.gguf_import", "flows.comparisons",
           "services.trainer.config", "services.trainer.peft", "services.trainer.memory", "services.common.contract.params",
           "services.quantizer.config", "services.quantizer.ptq",
           "services.evaluator.config", "services.evaluator.compare", "services.evaluator.metrics",
           "services.evaluator.study", "services.evaluator.score", "flows.report_profiles",
           "flows.experiment", "flows.aggregate", "flows.pipeline", "flows.dryrun", "flows.orchestrator",
           "flows.report", "flows.deployments"]


def test_imports_without_torch():
    code = ("import sys\nfor m in ('torch', 'transformers', 'peft', 'bitsandbytes'):\n    sys.modules[m] = None\n"
            f"import importlib\nfor m in {MODULES!r}:\n    importlib.import_module(m)\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
