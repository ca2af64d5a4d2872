"""Screen a planned experiment before paying participants: what will it show, how sure, how many people?

spec.py      the experiment YAML (population, arms or template + factors, outcomes, contrasts, subgroups, models)
design.py    personas (a split's participants, a CSV, or marginals) x arms x outcomes -> rows for the simulate stage
analysis.py  arm distributions, contrasts with bootstrap intervals, subgroup effects, power (pure)
job.py       `socrates-ray screen --experiment`: simulate with each model (eval.simulate), analyse, report
trust.py     `socrates-ray screen --from-split`: held-out human studies replayed as screenings; the fitted model error
report.py    screen.json / trust.json, report.md and the plots
"""
