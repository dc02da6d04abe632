"""The run's outcome: a DAG run whose tasks failed ends failed, even where the work went on past them.

Airflow decides a run's state from its leaf tasks only. The hourly DAG goes on past a failed exchange
(``marts_inputs`` waits for every load whatever its state) and past a failed dbt model (the gap
repairs wait for it, then a short-circuit skips the rebuild when nothing was repaired), and the
backfill's ``summary`` runs whatever its chunks did; their leaves then end skipped or successful,
so without this task such a run would show green in the UI, in the run metrics and to anything
reading the last successful run. ``run_outcome`` runs last, after everything (``all_done``), and
fails, naming the tasks, when any task of its run failed.

Airflow's own pattern for this is a "watcher" task (trigger rule ``one_failed``) downstream of every
task; this one waits for all of them instead, so its message lists every failure of the run.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from marketflow.logs import get_logger

log = get_logger(__name__)

FAILED_STATES = frozenset({"failed", "upstream_failed"})


def failed_tasks(states: dict[str, str | None]) -> list[str]:
    """The task ids (``task_mapindex`` for mapped ones) whose state is a failure, sorted."""
    return sorted(task_id for task_id, state in states.items() if state in FAILED_STATES)


@task(task_id="run_outcome", trigger_rule="all_done", execution_timeout=timedelta(minutes=5))
def _run_outcome() -> None:
    ti = get_current_context()["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    states.pop(ti.task_id, None)
    failed = failed_tasks(states)
    if failed:
        # AirflowFailException: no retry (the failures are final); a retry is only for an API hiccup.
        raise AirflowFailException(
            f"{len(failed)} task(s) of this run failed or could not run because a task before them failed: "
            f"{', '.join(failed)}. The tasks that did not depend on them ran (see the graph); the run is "
            "marked failed so it shows. Read the first failed task's log for the cause, fix it, then clear "
            "the failed tasks (or let the next run and the gap repairs catch up)."
        )
    log.info("all %d task(s) of this run succeeded or were skipped", len(states), tasks=len(states))


def run_outcome() -> None:
    """Add ``run_outcome`` after every leaf of the DAG being defined (call it last in the DAG function)."""
    outcome = _run_outcome().operator
    dag = outcome.dag
    for leaf in [t for t in dag.tasks if t is not outcome and not t.downstream_list]:
        leaf >> outcome
