"""Evaluate base vs finetuned with the paper's metrics on a Ray cluster: `socrates-ray evaluate`.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml
    # through a running Serve app instead of in-process replicas:
    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml simulate.backend=http

Writes <run>/eval/{metrics.json,report.md,*.png} and per-setting predictions.parquet.
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
