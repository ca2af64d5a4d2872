"""Finetune on a Ray cluster: the same as `socrates-ray train`, for `ray job submit`.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/finetune.py --config configs/demo.yaml train.max_steps=20

The run name (run.name) is pinned, so submitting the same command again resumes from the latest
checkpoint under train.storage_path/run.name instead of starting over.
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
