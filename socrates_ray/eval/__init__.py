"""The second half of the flow: simulate answers with a model, score them with the paper's metrics.

passes.py     one simulation pass as a frozen value (model, adapter, decoding, replicas), built once
replica.py    what answers a batch: a model replica in a Ray actor (and their pool), or an HTTP client
processor.py  a pass as a Ray Data processor (Dataset of rows -> Dataset of predictions)
simulate.py   resumable batch simulation: one driver per backend over one part folder
calibrate.py  the exact-mode temperature, fitted on the validation split
metrics.py    the paper's metrics, baselines, floors, cell spread (pure)
truth.py      synthetic data: distances to the true distributions and persona reading (pure)
anchor.py     the regression anchor: ridge on persona + stimulus words, scored like a model
results.py    the typed results every evaluation returns (and metrics.json holds)
job.py        base vs finetuned (and the anchor) on each setting, from one EvaluationPlan
report.py     metrics.json, report.md and the plots
"""
