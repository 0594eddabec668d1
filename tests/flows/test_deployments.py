"""prefect.yaml's deployments point at real flows with parameters those flows accept, the
experiments they name exist, and the list equals flows/deployments.py (no Prefect server needed)."""
from __future__ import annotations

import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

from flows.deployments import deployments
from flows.experiment import load
from tests.conftest import ROOT


def test_prefect_yaml_entrypoints_are_real_flows_with_valid_parameters(monkeypatch):
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the repository root
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    declared = spec["deployments"]
    assert {d["name"] for d in declared} >= {"phase1", "phase2", "phase3", "smoke", "evaluate-missing"}
    for d in declared:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert isinstance(flow, Flow), d["entrypoint"]
        flow.validate_parameters(d.get("parameters", {}))  # raises on an unknown or mistyped parameter
        assert d["work_pool"]["name"] == "ftlab-process"
        if "experiment" in d["parameters"]:
            assert load(d["parameters"]["experiment"]).name == d["name"]
    ours = {(d["name"], d["entrypoint"], repr(d["parameters"])) for d in deployments()}
    assert ours == {(d["name"], d["entrypoint"], repr(d["parameters"])) for d in declared}


def test_every_deployment_builds_for_serve():
    for d in deployments():
        dep = d["flow"].to_deployment(name=d["name"], parameters=d["parameters"])
        assert dep.name == d["name"] and dep.parameters == d["parameters"]
