"""Screen a planned experiment on a Ray cluster: the same as `socrates-ray screen`.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/screen.py --config configs/demo.yaml \\
        --experiment configs/experiments/carbon_tax_framing.yaml simulate.replicas=4 simulate.gpus_per_replica=1

Re-submitting the same command skips the rows already predicted; `--from-split unseen_studies` replays
held-out human studies instead and fits the interval scale that later screenings apply.
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["screen", *sys.argv[1:]]))
