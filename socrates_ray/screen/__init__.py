"""Screen a planned experiment before paying participants: what will it show, how sure, how many people?

spec.py       the experiment YAML (population, arms or template + factors, outcomes, contrasts, subgroups, models)
design.py     personas (a split's participants, a CSV, or marginals) x arms x outcomes -> rows for the simulate stage
simulator.py  each model's simulation pass (exact distributions, fitted temperature), built once from the config
analysis.py   arm distributions, contrasts with bootstrap intervals, subgroup effects, power (pure)
results.py    the typed results a screening and a trust check return (screen.json / trust.json hold them)
job.py        `socrates-ray screen --experiment`: simulate with each model, analyse, report
trust.py      `socrates-ray screen --from-split`: held-out human studies replayed as screenings; the fitted model error
report.py     screen.json / trust.json, report.md, the plots and the printed tables
"""
