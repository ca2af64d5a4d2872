"""Simulate a split's eval rows on a Ray cluster: the same as `socrates-ray simulate`.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/simulate.py --config configs/demo.yaml --setting unseen_studies \
        simulate.replicas=4 simulate.gpus_per_replica=1 simulate.adapter_path=/mnt/runs/x/checkpoint_000100/export

Re-submitting the same command skips the rows already predicted (row-level resume).
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
