"""Torch-free recipes for runtime tests: real child processes, without a model's start-up cost."""
from __future__ import annotations

import os
import signal
import time


def sleepy(ctx, cfg):
    for i in range(cfg["steps"]):
        ctx.progress(i + 1, cfg["steps"], {"loss": 1.0 / (i + 1)})
        time.sleep(cfg.get("sleep", 0.01))
    ctx.log("done")
    (open(os.path.join(cfg["pid_dir"], "pid"), "w").write(str(os.getpid()))) if cfg.get("pid_dir") else None
    return {"outputs": {"thing": "s3://models/thing/"}, "metrics": {"answer": 42}}


def record_pid_then_sleep(ctx, cfg):
    with open(os.path.join(cfg["pid_dir"], "pid"), "w") as fh:
        fh.write(str(os.getpid()))
    ctx.progress(1, 1000)
    time.sleep(600)


def ignore_sigterm(ctx, cfg):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.progress(1, 1000)
    time.sleep(600)


def raises(ctx, cfg):
    raise ValueError("the recipe found something wrong")


def killed(ctx, cfg):
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


def report_env(ctx, cfg):
    """What the job's process sees: its parent, its working directory, an environment variable."""
    return {"outputs": {"env": os.environ.get(cfg["var"], ""), "cwd": os.getcwd(),
                        "ppid": str(os.getppid()), "service": os.environ.get("FTLAB_SERVICE", "")}}


def fill_workdir_then(ctx, cfg):
    """Writes into its scratch folder, records the folder, then ends as ``cfg["end"]`` says."""
    with open(os.path.join(ctx.workdir, "weights.bin"), "wb") as fh:
        fh.write(b"\0" * 4096)
    with open(os.path.join(cfg["pid_dir"], "workdir"), "w") as fh:
        fh.write(ctx.workdir)
    if cfg["end"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg["end"] == "raise":
        raise ValueError("failed after writing")
    return {"outputs": {}, "metrics": {}}


def report_modules(ctx, cfg):
    """Which of ``cfg["modules"]`` this job found already imported when it started."""
    import sys
    return {"outputs": {m: str(m in sys.modules) for m in cfg["modules"]}}


def placed(ctx, cfg):
    """Records where it ran (GPUs Ray gave it, pid, start and end times) in ``cfg["log_dir"]``,
    then sleeps ``cfg["sleep"]`` seconds (after waiting, up to ``barrier_s``, until ``barrier`` jobs have
    started in the same folder): the placement tests read overlaps and GPU ids from it."""
    import json
    path = os.path.join(cfg["log_dir"], f"{ctx.job_id}.{ctx.attempt}")
    info = {"job": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid(), "ppid": os.getppid(), "start": time.time(),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with open(path + ".start", "w") as fh:
        json.dump(info, fh)
    ctx.progress(1, 2)
    deadline = time.time() + cfg.get("barrier_s", 45)  # wait for the jobs meant to run beside this one:
    while len([f for f in os.listdir(cfg["log_dir"]) if f.endswith(".start")]) < cfg.get("barrier", 0) \
            and time.time() < deadline:  # start-up times on a loaded machine must not decide overlaps
        time.sleep(0.1)
    time.sleep(cfg.get("sleep", 1.0))
    ctx.progress(2, 2)
    with open(path + ".end", "w") as fh:
        json.dump({"end": time.time()}, fh)
    return {"outputs": {"gpus": info["gpus"] or ""}, "metrics": {"pid": os.getpid()}}
