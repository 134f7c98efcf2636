"""The Celery task `umsrep.process_study`: thin, around the plain pipeline function.

The journal records its start and outcome exactly as in the node's embedded pool
(`pacs_node.dispatch.run_job`), so `umsrep studies` reads the same whichever ran it.
"""

from __future__ import annotations

from pacs_node.dispatch import TASK_NAME, run_job
from pacs_node.journal import Journal, journal_path
from workers.app import app, settings
from workers.pipeline import process_study as pipeline


@app.task(name=TASK_NAME)
def process_study(study_key: str, route: str) -> None:
    config = settings()
    journal = Journal(journal_path(config.node.data_dir))
    try:
        run_job(journal, config, study_key, route, pipeline)
    finally:
        journal.close()
