"""Prepare SocSci210 (or the synthetic stand-in) on a Ray cluster: `socrates-ray prepare`.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- \
        python jobs/prepare.py --config configs/qwen14b_lora.yaml

Reads data.raw (a folder on shared storage, or hf://datasets/socratesft/SocSci210 where the
cluster has network), validates rows, quarantines bad ones, builds prompts and writes the split
settings' Parquet shards to data.prepared, with one Ray task per input shard.
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
