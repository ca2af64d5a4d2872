"""The second half of the flow: simulate answers with a model, score them with the paper's metrics.

simulate.py   resumable batch simulation (a pool of model replicas, or HTTP clients of the Serve app)
calibrate.py  the exact-mode temperature, fitted on the validation split
metrics.py    the paper's metrics, baselines, floors, cell spread (pure)
anchor.py     the regression anchor: ridge on persona + stimulus words, scored like a model
job.py        base vs finetuned (and the anchor) on each setting; the demo's Serve check
report.py     metrics.json, report.md and the plots
"""
