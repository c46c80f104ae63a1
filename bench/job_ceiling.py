"""What the test bed's own Job controller can do, with no operator: N plain Jobs (one pod
each, on the kwok CPU pool, which completes a Job's pod as soon as it runs) made at once, and
the time until every one is complete. A lower bound for anything that makes a Job per
object: bench/scale.py's "all reconciled" waits for 500 download Jobs.

    .venv/bin/python bench/job_ceiling.py [--jobs 500] [--timeout 600]

The namespace is deleted at the end (on Ctrl-C too)."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from testbed_cluster import open_testbed  # noqa: E402


def job(i: int) -> dict:
    return {"metadata": {"name": f"j{i:04d}"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"modelship.io/pool": "cpu", "type": "kwok"},
                "containers": [{"name": "c", "image": "example.invalid/none:1",
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    _, api, namespace = open_testbed("jobs")
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: batch.create_namespaced_job(namespace, job(i)), range(args.jobs)))
        made = time.monotonic() - start
        print(f"{args.jobs} Jobs made in {made:.1f} s", flush=True)
        done, last = 0, -1
        while time.monotonic() - start < args.timeout:
            items = batch.list_namespaced_job(namespace).items
            done = sum(1 for j in items if any(c.type == "Complete" and c.status == "True"
                                               for c in (j.status.conditions or [])))
            if done != last:
                print(f"  {time.monotonic() - start:6.1f} s: {done}/{args.jobs} complete", flush=True)
                last = done
            if done == args.jobs:
                break
            time.sleep(1.0)
        took = time.monotonic() - start
        print(f"all {args.jobs} complete in {took:.1f} s ({args.jobs / took:.1f} Jobs a second)" if done == args.jobs
              else f"{done}/{args.jobs} complete after {took:.1f} s")
    finally:
        core.delete_namespace(namespace)


if __name__ == "__main__":
    main()
