"""`python -m socrates_ray <command> --config C.yaml [overrides]`: the same as `socrates-ray`, and the
form `ray job submit -- python -m socrates_ray ...` runs on a cluster (no console script needed there)."""

import sys

from socrates_ray.cli import main

sys.exit(main())
