"""The scrub as a Prefect flow a team can schedule (deployment ``ftlab-verify/verify`` in
prefect.yaml): re-hash what storage holds against the manifests (services/common/storage/scrub.py, the
same scrub as ``ftlab verify``). Every artifact that is not intact is logged with its problems,
the summary is a table artifact of the run, and the run FAILS when anything is corrupt, missing
or disagrees with its lineage, so a schedule's failure notification is the alarm. An interrupted
run resumes where it stopped (the scrub's state file, under FTLAB_CACHE_DIR)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from services.common.storage import scrub
from services.common.storage.artifacts import IntegrityError
from services.common.storage.factory import store_from_env


@flow(name="ftlab-verify", log_prints=True)
def verify_flow(targets: list[str] | None = None) -> dict[str, Any]:
    """``targets``: buckets or artifacts as ``ftlab verify`` takes them; none = every bucket."""
    logger = get_run_logger()
    store = store_from_env()
    targets = list(targets or [])

    def on_result(res: scrub.Result, resumed: bool) -> None:
        if res.status != "intact":
            logger.error("%s %s%s: %s", res.status.upper(), res.uri, " (from the interrupted run)" if resumed else "",
                         "; ".join(res.problems))

    results = scrub.scrub(store, targets, scrub.default_state_path(store, targets), on_result=on_result)
    counts = scrub.summary(results)
    create_table_artifact(key="ftlab-verify", description=f"scrub of {store.describe()}",
                          table=[{"uri": r.uri, "status": r.status, "files": r.files, "bytes": r.bytes,
                                  "problems": "; ".join(r.problems)} for r in results if r.status != "intact"]
                          or [{"uri": "(all)", "status": "intact", "files": counts["files"], "bytes": counts["bytes"],
                               "problems": ""}])
    line = ", ".join(f"{counts[s]} {s}" for s in scrub.STATUSES)
    logger.info("verified %d artifacts (%d files, %d bytes): %s", counts["artifacts"], counts["files"],
                counts["bytes"], line)
    if counts["intact"] != counts["artifacts"]:
        raise IntegrityError([f"scrub of {store.describe()}: {line}"])
    return counts
