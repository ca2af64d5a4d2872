"""Deploy the Serve app on a Ray cluster: the same as `socrates-ray serve --no-block`, for
`ray job submit`. The app keeps running on the cluster after the job returns.

    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/serve.py --config configs/demo.yaml serve.host=0.0.0.0

Adapters: serve.adapters_dir (sub-folders addressed by name) and serve.adapters (name -> folder);
the newest export of run.name's training is registered as 'finetuned'.
"""

import sys

from socrates_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--no-block", *sys.argv[1:]]))
