"""The regression anchor: the model a social scientist would fit instead of finetuning an LLM.

A ridge regression on what the prompt says, fitted on a setting's train split and scored with
the same exact-mode metrics as the language models, so every report shows whether the LLM beats
it:

- features: one-hot persona fields (age standardised and binned), stimulus words,
  and those words crossed with party, ideology and age (a frame or a topic moves partisans in
  opposite directions; age moves some topics);
- target: the answer's position on its own scale, 0 (lowest option) to 1 (highest); refusal
  codes outside the scale are left out;
- distribution: each participant gets an ordered logit over their scale's options around the
  predicted position (tails pile up on the end options, as answers do); the ridge penalty and the
  spread are chosen together by validation negative log-likelihood (never the test split): a
  penalty chosen by squared error over-shrinks, since single answers are so noisy that flattening
  every cell towards the average costs little MSE but loses the differences between cells;
- open-ended amounts (no bounded scale) get one draw from the training split's open-ended answers,
  the marginal a regression on positions cannot give.

The output is a prediction table shaped like simulate.py's (prediction, options, probs), so
the evaluation (job.py, metrics.py) scores it without knowing where it came from.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from socrates_ray.data.prompts import MAX_SCALE_OPTIONS, PERSONA_ORDER
from socrates_ray.errors import SocratesError

ALPHAS = (30.0, 100.0, 300.0, 1000.0, 3000.0)
SPREADS = (0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8)
INTERACT_FIELDS = ("party_id", "ideology")
MIN_STUDIES = 3  # a stimulus word is a feature only when at least this many studies use it


class AnchorError(SocratesError, ValueError):
    """The anchor cannot be fitted (no scorable training rows)."""


@dataclass
class Anchor:
    vectorizer: Any  # sklearn DictVectorizer over persona fields
    words: Any  # sklearn CountVectorizer over stimulus text
    model: Any  # sklearn Ridge
    alpha: float
    spread: float
    open_answers: np.ndarray
    age_mean: float
    age_sd: float
    val_mse: float
    val_nll: float


def _bounded(row: dict[str, Any]) -> bool:
    low, high = row["scale_low"], row["scale_high"]
    return low is not None and high is not None and 0 < high - low < MAX_SCALE_OPTIONS


def _persona_features(demo: dict[str, Any] | None, age_mean: float, age_sd: float) -> dict[str, float]:
    demo = demo or {}
    feats: dict[str, float] = {}
    for key in PERSONA_ORDER:
        value = demo.get(key)
        if key == "age":
            if value is None:
                feats["age:missing"] = 1.0
            else:
                feats["age_z"] = (float(value) - age_mean) / age_sd
                feats[f"age_bin={min(int(value) // 10, 8)}"] = 1.0
        else:
            feats[f"{key}={'missing' if value is None else value}"] = 1.0
    return feats


def _design(anchor_parts: tuple[Any, Any, float, float], rows: list[dict[str, Any]], fit: bool = False):
    """Sparse design matrix: persona one-hots | words | words x (party, ideology, age)."""
    import scipy.sparse as sp

    vectorizer, words, age_mean, age_sd = anchor_parts
    personas = [_persona_features(r["demographic"], age_mean, age_sd) for r in rows]
    texts = [r["stimuli"] for r in rows]
    P = vectorizer.fit_transform(personas) if fit else vectorizer.transform(personas)
    W = words.fit_transform(texts) if fit else words.transform(texts)
    W = sp.csr_matrix(W, dtype=np.float64)
    blocks = [P, W]
    names = vectorizer.feature_names_
    for field in INTERACT_FIELDS:
        columns = [i for i, n in enumerate(names) if n.startswith(field + "=") and not n.endswith("=missing")]
        for i in columns:
            blocks.append(W.multiply(P[:, i]).tocsr())
    age_col = names.index("age_z") if "age_z" in names else None
    if age_col is not None:
        blocks.append(W.multiply(P[:, age_col]).tocsr())
    # vignette words x question words: "oppose" or a reversed answer code flips what a frame does
    Q = sp.csr_matrix(words.transform([t.rsplit("\n\n", 1)[-1] for t in texts]), dtype=np.float64)
    V = W - Q.multiply(W)
    blocks.append(_row_outer(V, Q))
    return sp.hstack(blocks).tocsr()


def _row_outer(a: Any, b: Any) -> Any:
    """Row-wise outer products of two sparse binary matrices, flattened: (n, p) x (n, q) -> (n, p * q)."""
    import scipy.sparse as sp

    a, b = a.tocsr(), b.tocsr()
    rows, cols = [], []
    for i in range(a.shape[0]):
        ai = a.indices[a.indptr[i]:a.indptr[i + 1]]
        bi = b.indices[b.indptr[i]:b.indptr[i + 1]]
        if len(ai) and len(bi):
            rows.append(np.full(len(ai) * len(bi), i))
            cols.append((ai[:, None] * b.shape[1] + bi[None, :]).ravel())
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(a.shape[0], a.shape[1] * b.shape[1]))


def shared_words(rows: list[dict[str, Any]], min_studies: int = MIN_STUDIES) -> list[str]:
    """Words used by at least min_studies studies: a word of one study only identifies that study,
    and a regression would spend it on the study's own quirks instead of what carries over."""
    from sklearn.feature_extraction.text import CountVectorizer

    analyzer = CountVectorizer().build_analyzer()
    studies: dict[str, set[str]] = {}
    for r in rows:
        studies.setdefault(r["study_id"], set()).update(analyzer(r["stimuli"]))
    counts: dict[str, int] = {}
    for words in studies.values():
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    needed = min(min_studies, len(studies))
    return sorted(w for w, n in counts.items() if n >= needed)


def _positions(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([(r["response"] - r["scale_low"]) / (r["scale_high"] - r["scale_low"]) for r in rows])


def _in_scale(row: dict[str, Any]) -> bool:
    return _bounded(row) and row["scale_low"] <= row["response"] <= row["scale_high"]


def option_probs(latent: float, spread: float, n_options: int) -> np.ndarray:
    """An ordered logit over n evenly spaced options in [0, 1]: cut points halfway between options,
    a logistic of width `spread` around the latent position (which may lie outside [0, 1]), so
    the tails pile up on the end options as real answer distributions do. Sums to 1."""
    cuts = (np.arange(1, n_options) - 0.5) / (n_options - 1)
    cdf = 1.0 / (1.0 + np.exp(-(cuts - latent) / spread))
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _nll(means: np.ndarray, rows: list[dict[str, Any]], spread: float) -> float:
    total = 0.0
    for m, r in zip(means, rows):
        p = option_probs(float(m), spread, r["scale_high"] - r["scale_low"] + 1)
        total -= float(np.log(max(p[r["response"] - r["scale_low"]], 1e-12)))
    return total / max(len(rows), 1)


def fit_anchor(train: pa.Table, val: pa.Table) -> Anchor:
    """Fit the ridge on `train`; choose its penalty and spread on `val` (held-out units of train)."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import Ridge

    train_rows = train.to_pylist()
    fit_rows = [r for r in train_rows if _in_scale(r)]
    val_rows = [r for r in val.to_pylist() if _in_scale(r)] or fit_rows
    if not fit_rows:
        raise AnchorError("anchor: the train split has no answers on a bounded scale; nothing to fit")
    ages = np.array([float(r["demographic"]["age"]) for r in fit_rows if (r["demographic"] or {}).get("age") is not None])
    age_mean, age_sd = (float(ages.mean()), float(ages.std() or 1.0)) if len(ages) else (0.0, 1.0)
    parts = (DictVectorizer(), CountVectorizer(binary=True, vocabulary=shared_words(fit_rows)), age_mean, age_sd)
    X = _design(parts, fit_rows, fit=True)
    Xv = _design(parts, val_rows)
    y, yv = _positions(fit_rows), _positions(val_rows)
    best = None
    for alpha in ALPHAS:
        # lsqr: much faster than the sparse conjugate gradient sklearn picks for a sparse design
        # this wide (tens of thousands of columns, a few thousand rows)
        model = Ridge(alpha=alpha, solver="lsqr").fit(X, y)
        means = model.predict(Xv)
        nll, spread = min((_nll(means, val_rows, s), s) for s in SPREADS)
        if best is None or nll < best[0]:
            best = (nll, alpha, spread, model, float(np.mean((means - yv) ** 2)))
    nll, alpha, spread, model, mse = best
    open_answers = np.array([r["response"] for r in train_rows if not _bounded(r)], dtype=np.int64)
    return Anchor(parts[0], parts[1], model, alpha, spread, open_answers, age_mean, age_sd, mse, nll)


def option_distributions(anchor: Anchor, records: list[dict[str, Any]]) -> list[np.ndarray | None]:
    """Per row (needs stimuli, demographic, scale_low, scale_high): the anchor's distribution over
    the options scale_low..scale_high, or None for an open-ended answer."""
    parts = (anchor.vectorizer, anchor.words, anchor.age_mean, anchor.age_sd)
    bounded = [i for i, r in enumerate(records) if _bounded(r)]
    means = anchor.model.predict(_design(parts, [records[i] for i in bounded])) if bounded else []
    out: list[np.ndarray | None] = [None] * len(records)
    for i, m in zip(bounded, means):
        out[i] = option_probs(float(m), anchor.spread, records[i]["scale_high"] - records[i]["scale_low"] + 1)
    return out


def predict_anchor(anchor: Anchor, rows: pa.Table) -> pa.Table:
    """A prediction table for `rows` (simulate.py's shape): per participant the options of their
    scale with the anchor's distribution, and one answer drawn from it (seeded by the row key)."""
    records = rows.to_pylist()
    predictions, options, probs = [], [], []
    for r, p in zip(records, option_distributions(anchor, records)):
        rng = np.random.default_rng(zlib.crc32(f"{r['study_id']}/{r['sample_id']}".encode()))
        if p is not None:
            opts = list(range(r["scale_low"], r["scale_high"] + 1))
            options.append(opts)
            probs.append(p.tolist())
            predictions.append(int(opts[int(rng.choice(len(opts), p=p))]))
        else:
            options.append(None)
            probs.append(None)
            predictions.append(int(rng.choice(anchor.open_answers)) if len(anchor.open_answers) else None)
    keep = [c for c in ("study_id", "sample_id", "participant", "condition_num", "task_num", "response",
                        "scale_low", "scale_high", "demographic") if c in rows.column_names]
    return rows.select(keep).append_column("prediction", pa.array(predictions, pa.int64())) \
        .append_column("options", pa.array(options, pa.list_(pa.int64()))) \
        .append_column("probs", pa.array(probs, pa.list_(pa.float64())))


def describe(anchor: Anchor) -> dict[str, Any]:
    """What was chosen on the validation split, for metrics.json and the report."""
    return {"alpha": anchor.alpha, "spread": anchor.spread, "val_mse": round(anchor.val_mse, 5),
            "val_nll": round(anchor.val_nll, 4), "features": int(anchor.model.coef_.shape[0])}
