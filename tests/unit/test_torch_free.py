"""ftlab/, services/common (but modeling) and flows import without torch: the CLI, clients and flows
run on machines without it."""
from __future__ import annotations

import subprocess
import sys

MODULES = ["ftlab.cli", "services.common.clients", "services.common.job_runtime", "services.common.service_main",
           "ftlab.stack", "services.common.storage", "services.common.s3_store", "services.common.artifacts",
           "services.common.tasks", "services.common.data_import", "services.common.job_servicer",
           "services.common.job_context", "services.common.job_record", "services.common.store_factory",
           "services.common.job_leases", "services.common.job_scratch", "ftlab.listing",
           "services.common.grpc_server", "services.common.naming", "services.common.settings",
           "services.trainer.server", "services.quantizer.server", "services.evaluator.server",
           "services.common.auth", "services.common.tls", "services.common.observability",
           "ftlab.doctor", "services.common.healthcheck", "services.common.gguf_import", "flows.comparisons",
           "services.trainer.config", "services.trainer.peft", "services.trainer.memory", "services.common.params",
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
