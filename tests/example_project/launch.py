#!/usr/bin/env python3
"""The same work through submitit: two tasks on two nodes, results returned to the launcher.

python launch.py            # from the project folder, on a login node
"""

from __future__ import annotations

import submitit
from example.report import report


def main() -> None:
    executor = submitit.AutoExecutor(folder="submitit/%j")  # in the project: shared by every node
    executor.update_parameters(
        name="hello-submitit", nodes=2, tasks_per_node=1, gpus_per_node=1, timeout_min=5
    )
    job = executor.submit(report, "results/submitit")
    print(f"submitted job {job.job_id}", flush=True)
    rows = job.results()  # one per task; raises if a task failed
    for row in rows:
        print(f"rank {row['rank']} on {row['host']}: tabulate {row['tabulate']}")
    print(f"job {job.job_id}: {len(rows)} tasks returned")


if __name__ == "__main__":
    main()
