"""screen.json, report.md and plots of a screening (and of a --from-split trust check), and the
tables the CLI prints; all read the typed results (results.py)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from socrates_ray.eval.results import to_json
from socrates_ray.plots import new_figure, save_png
from socrates_ray.screen.results import ScreenResult, TrustResult


def _fmt_interval(iv: list[float]) -> str:
    return f"[{iv[0]:+.2f}, {iv[1]:+.2f}]"


def plot_distributions(results: ScreenResult, path: Path | None = None) -> Figure:
    """One panel per (outcome, model): each arm's predicted answer distribution."""
    models, outcomes = list(results.models), results.outcomes
    fig, axes = new_figure(4.5 * len(models), 3.2 * len(outcomes), len(outcomes), len(models))
    for i, outcome in enumerate(outcomes):
        for j, model in enumerate(models):
            ax = axes[i][j]
            arms = results.models[model].outcomes[outcome].arms
            for name, arm in arms.items():
                ax.plot(arm.options, arm.distribution, marker="o" if len(arm.options) <= 11 else None, label=f"{name} (mean {arm.mean:.2f})")
            ax.set_title(f"{outcome}: {model}", fontsize=9)
            ax.set_xlabel("answer")
            ax.set_ylabel("predicted share")
            ax.legend(fontsize=7)
    return save_png(fig, path)


def plot_effects(results: ScreenResult, path: Path | None = None) -> Figure:
    """Forest plot: every contrast (and its subgroup effects, indented) with its interval, per model."""
    labels, points = [], []
    models = list(results.models)
    for outcome in results.outcomes:
        first = results.models[models[0]].outcomes[outcome].contrasts
        for k, c in enumerate(first):
            rows = [(f"{outcome}: {c.treatment} vs {c.control}", None, None)]
            for field, levels in c.subgroups.items():
                rows += [(f"    {field} = {level}", field, level) for level in levels]
            for label, field, level in rows:
                labels.append(label)
                points.append([])
                for model in models:
                    cm = results.models[model].outcomes[outcome].contrasts[k]
                    e = cm if field is None else cm.subgroups.get(field, {}).get(level)
                    points[-1].append(e)
    fig, axes = new_figure(8, 0.35 * len(labels) + 1.5)
    ax = axes[0][0]
    for j, model in enumerate(models):
        offset = (j - (len(models) - 1) / 2) * 0.25
        for i, row in enumerate(points):
            e = row[j]
            if e is None:
                continue
            y = len(labels) - 1 - i + offset
            ax.errorbar(e.difference, y, xerr=[[e.difference - e.interval[0]], [e.interval[1] - e.difference]],
                        fmt="o", color=f"C{j}", capsize=2, label=model if i == 0 else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.set_xlabel(f"predicted difference in mean answer (treatment - control), {results.analysis['interval']:.0%} interval")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def write_screen_report(results: ScreenResult, folder: Path) -> Path:
    """screen.json + report.md + distributions.png + effects.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "screen.json").write_text(to_json(results))
    plot_distributions(results, folder / "distributions.png")
    plot_effects(results, folder / "effects.png")
    a = results.analysis
    lines = [f"# Screening: {results.experiment}", "",
             f"{results.n_per_arm} simulated participants per arm, {results.design}-subject; personas from "
             f"{results.population['source']}; control arm `{results.control}`. Intervals ({a['interval']:.0%}) are for "
             "what a human study of the same size would observe: personas resampled and one answer drawn from each "
             f"participant's predicted distribution ({a['bootstrap']} draws), widened by each model's error in effects (fitted on "
             "held-out human studies by `screen --from-split`; 0 = sampling only). "
             f"Power: two-sided t test at alpha {a['alpha']}.", "", "## Arms", ""]
    lines += [f"- `{name}`: {text or '(no text)'}" for name, text in results.arms.items()]
    for model, m in results.models.items():
        lines += ["", f"## {model} (temperature {m.temperature:.2f}, model error {m.model_error:.3f} of the scale's range)"]
        for outcome, o in m.outcomes.items():
            lines += ["", f"### {outcome}", "", "| arm | n | mean | sd | predicted distribution |", "|---|---|---|---|---|"]
            for name, arm in o.arms.items():
                dist = " ".join(f"{p:.2f}" for p in arm.distribution) if len(arm.distribution) <= 11 else f"{len(arm.distribution)} options"
                lines.append(f"| {name} | {arm.n} | {arm.mean:.2f} | {arm.sd:.2f} | {dist} |")
            lines += ["", "| contrast | difference [interval] | d [interval] | verdict | humans per arm needed | power at planned n |",
                      "|---|---|---|---|---|---|"]
            for c in o.contrasts:
                need = c.humans_per_arm_needed
                lines.append(f"| {c.treatment} vs {c.control} | {c.difference:+.2f} {_fmt_interval(c.interval)} | "
                             f"{c.d:+.2f} {_fmt_interval(c.d_interval)} | {c.verdict} | {need if need is not None else '> 10M'} | "
                             f"{c.power_at_planned_n:.2f} (n={c.planned_n}) |")
            for c in o.contrasts:
                for field, levels in c.subgroups.items():
                    if not levels:
                        lines += ["", f"{c.treatment} vs {c.control} by {field}: no level has {a['min_subgroup_n']}+ people in both arms."]
                        continue
                    lines += ["", f"{c.treatment} vs {c.control} by {field}:", "", "| level | n (treatment/control) | difference [interval] |", "|---|---|---|"]
                    lines += [f"| {level} | {e.n_treatment}/{e.n_control} | {e.difference:+.2f} {_fmt_interval(e.interval)} |"
                              for level, e in levels.items()]
    lines += ["", "![distributions](distributions.png)", "", "![effects](effects.png)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def plot_trust(results: TrustResult, path: Path | None = None) -> Figure:
    """Predicted vs observed (and true) differences, as shares of each scale's range, per model."""
    models = list(results.models)
    fig, axes = new_figure(4.5 * len(models), 4.2, 1, len(models))
    for j, model in enumerate(models):
        ax = axes[0][j]
        cs = results.models[model].contrasts
        ax.scatter([c.observed / c.range for c in cs], [c.predicted / c.range for c in cs], s=10, label="human (observed)")
        known = [c for c in cs if c.true is not None]
        if known:
            ax.scatter([c.true / c.range for c in known], [c.predicted / c.range for c in known], s=10, marker="x", label="true effect")
        lim = max([0.05] + [abs(v) for c in cs for v in (c.observed / c.range, c.predicted / c.range)])
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set_xlabel("effect (share of the scale)")
        ax.set_ylabel("predicted effect")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def write_trust_report(results: TrustResult, folder: Path) -> Path:
    """trust.json + report.md + predicted_vs_observed.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trust.json").write_text(to_json(results))
    plot_trust(results, folder / "predicted_vs_observed.png")
    lines = [f"# Screening trust on {results.setting}/eval", "",
             f"Every study of the split replayed as a screening (lowest condition = control). Intervals at {results.level:.0%}; "
             f"each model's error in effects fitted on {results.fitted_on}. Sign agreement counts contrasts whose human Welch interval "
             "excludes 0; correlations use differences divided by each scale's range.", "", trust_table(results), "",
             "Subgroup effects: per contrast and level of a field with enough people in both arms, the level's effect minus "
             "the overall effect (a share of the scale). A model that reads no persona predicts deviations near 0: a spread "
             "far below the humans' and no correlation.", "", subgroup_table(results), ""]
    for name, m in results.models.items():
        v = m.validation
        lines.append(f"- {name}: validation coverage {v.before.coverage or 0:.0%} with sampling only -> "
                     f"{v.after.coverage or 0:.0%} with the fitted model error {m.model_error:.3f} ({v.before.contrasts} contrasts)")
    lines += ["", "![predicted vs observed](predicted_vs_observed.png)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary_table(results: ScreenResult) -> str:
    """The short table `screen` prints: one line per model, outcome and contrast."""
    lines = ["| model | outcome | contrast | difference [interval] | d | verdict | humans per arm for "
             f"{results.analysis['power']:.0%} power | power at n={results.planned_n} |",
             "|---|---|---|---|---|---|---|---|"]
    for model, m in results.models.items():
        for outcome, o in m.outcomes.items():
            for c in o.contrasts:
                need = c.humans_per_arm_needed
                lines.append(f"| {model} | {outcome} | {c.treatment} vs {c.control} | {c.difference:+.2f} "
                             f"[{c.interval[0]:+.2f}, {c.interval[1]:+.2f}] | {c.d:+.2f} | {c.verdict} | "
                             f"{need if need is not None else '> 10M'} | {c.power_at_planned_n:.2f} |")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def trust_table(results: TrustResult) -> str:
    """The table `screen --from-split` prints: agreement with the humans per model, before and after the model error."""
    lines = ["| model | contrasts (clear) | sign agreement | correlation | coverage: sampling only -> with model error (fitted error) | vs truth: sign / r / coverage |",
             "|---|---|---|---|---|---|"]
    for name, m in results.models.items():
        b, a = m.eval.before, m.eval.after
        t = a.vs_truth
        truth = f"{_pct(t.sign_agreement)} / {_num(t.correlation)} / {_pct(t.coverage)}" if t else "-"
        lines.append(f"| {name} | {b.contrasts} ({b.clear_human_contrasts}) | {_pct(b.sign_agreement)} | {_num(b.correlation)} | "
                     f"{_pct(b.coverage)} -> {_pct(a.coverage)} ({m.model_error:.3f} of the range) | {truth} |")
    return "\n".join(lines)


def subgroup_table(results: TrustResult) -> str:
    """Subgroup effects: each model's deviations of a level's effect from the overall effect, against the humans'."""
    lines = ["| model | field | levels | r with observed | spread: predicted / observed | vs truth: r / spread / sign |",
             "|---|---|---|---|---|---|"]
    for name, m in results.models.items():
        for g in m.subgroups:
            truth = f"{_num(g.correlation_true)} / {_num(g.spread_true)} / {_pct(g.sign_agreement_true)}" if g.spread_true is not None else "-"
            lines.append(f"| {name} | {g.field} | {g.levels} | {_num(g.correlation)} | {_num(g.spread_predicted)} / "
                         f"{_num(g.spread_observed)} | {truth} |")
    return "\n".join(lines)
