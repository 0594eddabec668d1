"""What a job asks Ray for, and the placement settings (no Ray needed)."""
from __future__ import annotations

import pytest

from services.common.contract.errors import ValidationError
from services.common.jobs.ray_placement import demand
from services.common.contract.settings import Placement, ServiceSettings, placement


def test_gpus_a_job_asks_for():
    whole, frac = Placement(mode="ray"), Placement(mode="ray", device_memory_gb=40)
    assert demand({}, whole, cluster_gpus=8) == 1
    assert demand({"world_size": 4}, whole, cluster_gpus=8) == 4
    assert demand({"device_type": "cpu", "world_size": 4}, whole, cluster_gpus=8) == 0
    assert demand({}, whole, cluster_gpus=8, service_device="cpu") == 0
    assert demand({}, whole, cluster_gpus=0) == 0                       # a CPU-only cluster
    assert demand({"memory_estimate_gb": 9}, whole, cluster_gpus=1) == 1  # no device size: whole GPUs
    assert demand({"memory_estimate_gb": 9}, frac, cluster_gpus=1) == 0.25   # 9/40 -> 2/8
    assert demand({"memory_estimate_gb": 10.1}, frac, cluster_gpus=1) == 0.375  # rounded up to eighths
    assert demand({"memory_estimate_gb": 45}, frac, cluster_gpus=1) == 1     # does not fit: a whole GPU
    assert demand({"memory_estimate_gb": 9, "world_size": 2}, frac, cluster_gpus=2) == 2


def test_placement_settings():
    assert placement({}) == Placement()
    p = placement({"FTLAB_PLACEMENT": "Ray", "FTLAB_RAY_ADDRESS": "10.0.0.1:6379", "FTLAB_DEVICE_MEMORY_GB": "80",
                   "FTLAB_RAY_JOB_CPUS": "0", "FTLAB_RAY_RANKS_PER_NODE": "4"})
    assert (p.mode, p.ray_address, p.device_memory_gb, p.job_cpus, p.ranks_per_node) == \
        ("ray", "10.0.0.1:6379", 80.0, 0.0, 4)


def test_bad_placement_settings_are_listed_together_at_start():
    with pytest.raises(ValidationError) as exc:
        ServiceSettings.from_env("trainer", {"FTLAB_PLACEMENT": "kubernetes", "FTLAB_DEVICE_MEMORY_GB": "0",
                                             "FTLAB_RAY_JOB_CPUS": "-1", "FTLAB_RAY_RANKS_PER_NODE": "two"})
    text = str(exc.value)
    for name in ("FTLAB_PLACEMENT", "FTLAB_DEVICE_MEMORY_GB", "FTLAB_RAY_JOB_CPUS", "FTLAB_RAY_RANKS_PER_NODE"):
        assert name in text, text


def test_replicas_sharing_a_store_are_refused_at_start():
    # the S3 lease queue that let replicas share a store is gone: its setting stops the service
    with pytest.raises(ValidationError) as exc:
        ServiceSettings.from_env("trainer", {"FTLAB_REPLICA_ID": "trainer-1", "FTLAB_PLACEMENT": "ray"})
    assert "FTLAB_REPLICA_ID" in str(exc.value) and "FTLAB_PLACEMENT=ray" in str(exc.value), exc.value
    ServiceSettings.from_env("trainer", {"FTLAB_REPLICA_ID": " "})  # empty, as compose passes it: fine
