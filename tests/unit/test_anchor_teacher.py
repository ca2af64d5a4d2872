"""The anchor teacher (train.anchor_teacher): the regression anchor's distribution over each training
row's options travels with packed rows to that example's answer position, the loss pulls the model's
option distribution there, and rows it cannot teach are left to their answers. Its contrast shuffles
a cell's rows in pairs and scores only how each example departs from its cell's mean."""

import numpy as np
import pytest
import torch

from socrates_ray.data.tokenize import IGNORE_INDEX, collate_rows, pack_rows, single_rows
from socrates_ray.eval.anchor import fit_anchor, option_distributions
from socrates_ray.train.anchor_teacher import (
    TEACHER_WIDTH, cell_keys, contrast_loss, paired_order, teacher_arrays, teacher_loss, teacher_targets, within_cell_contrast,
)
from socrates_ray.train.steps import label_positions
from test_anchor import table  # the anchor tests' world: frames, and party by topic

DIGITS = {str(d): 40 + d for d in range(10)}  # a toy tokenizer: one token per digit, two for "10" and above


def encode_answers(texts):
    return [[DIGITS[t]] if t in DIGITS else [DIGITS[t[0]], DIGITS[t[1]]] for t in texts]


@pytest.fixture(scope="module")
def anchor():
    return fit_anchor(table(800, 0, ["parks", "roads"]), table(200, 1, ["parks", "roads"]))


def test_targets_are_the_anchors_distributions_on_each_options_token(anchor):
    rows = table(6, 3, ["parks", "roads"]).to_pylist()
    rows[1] = {**rows[1], "scale_low": 0, "scale_high": 10}  # "10" is two tokens: no soft label
    rows[2] = {**rows[2], "scale_low": None, "scale_high": None}  # open-ended: no soft label
    got = teacher_targets(anchor, rows, encode_answers)
    expected = option_distributions(anchor, rows)
    for i, (ids, probs) in enumerate(got):
        assert len(ids) == len(probs) == TEACHER_WIDTH
        if i in (1, 2):
            assert ids == [IGNORE_INDEX] * TEACHER_WIDTH and probs == [0.0] * TEACHER_WIDTH
            continue
        assert ids[:5] == [DIGITS[str(v)] for v in range(1, 6)] and ids[5:] == [IGNORE_INDEX] * (TEACHER_WIDTH - 5)
        assert np.allclose(probs[:5], expected[i]) and sum(probs) == pytest.approx(1.0)
    # the anchor reads the persona: two participants of one stimulus get different targets
    a, b = dict(rows[0]), dict(rows[0])
    a["demographic"] = {**a["demographic"], "party_id": "Strong Democrat"}
    b["demographic"] = {**b["demographic"], "party_id": "Strong Republican"}
    (_, pa_), (_, pb) = teacher_targets(anchor, [a, b], encode_answers)
    assert np.abs(np.subtract(pa_, pb)).max() > 0.05


def examples(lengths, answers):
    """(input_ids, labels): a prompt of n - 2 tokens, then the answer's digit token and an end-of-turn token."""
    return [(list(range(1, n - 1)) + [DIGITS[a], 2], [IGNORE_INDEX] * (n - 2) + [DIGITS[a], 2])
            for n, a in zip(lengths, answers)]


def teacher_of(k):
    """Example k's teacher: options 1..3, all the mass on option 1 + (k % 3)."""
    probs = [0.0, 0.0, 0.0]
    probs[k % 3] = 1.0
    return [DIGITS["1"], DIGITS["2"], DIGITS["3"]] + [IGNORE_INDEX] * (TEACHER_WIDTH - 3), probs + [0.0] * (TEACHER_WIDTH - 3)


@pytest.mark.parametrize("packed", [True, False])
def test_the_loss_reads_each_examples_own_teacher_at_its_answer_position(packed):
    lengths, answers = [9, 5, 7, 4, 6], ["1", "2", "3", "1", "2"]
    pairs = [teacher_of(k) for k in range(len(lengths))]
    pairs[3] = ([IGNORE_INDEX] * TEACHER_WIDTH, [0.0] * TEACHER_WIDTH)  # no teacher: left out
    extras = teacher_arrays(pairs, list(range(len(pairs))))
    rows = pack_rows(examples(lengths, answers), 16, 0, extras) if packed else single_rows(examples(lengths, answers), extras)
    batch = collate_rows(rows, 0)
    assert batch["teacher_probs"].dtype == torch.float32 and batch["teacher_ids"].dtype == torch.int64
    keep = label_positions(batch["labels"])
    # logits that put the mass exactly where each example's teacher does: the loss is the minimum (0)
    logits = torch.full((len(rows), len(keep), 64), -30.0)
    for r, row in enumerate(rows):
        for e in range(int(row.seq_ids.max())):
            start = int(np.flatnonzero(row.seq_ids == e + 1)[0])
            at = start + int(np.flatnonzero(row.labels[start:] != IGNORE_INDEX)[0]) - 1
            k = [k for k, (i, _) in enumerate(examples(lengths, answers)) if len(i) == int((row.seq_ids == e + 1).sum())][0]
            logits[r, int((keep == at).nonzero())] = torch.where(torch.arange(64) == DIGITS[str(1 + k % 3)], 30.0, -30.0)
    assert float(teacher_loss(logits, keep, batch)) < 1e-6
    # the same logits one example off: a loss near 60 nats for each taught example
    shifted = torch.roll(logits, 1, dims=2)
    assert float(teacher_loss(shifted, keep, batch)) > 30
    # no example taught: a zero that still has a graph
    plain = collate_rows(pack_rows(examples(lengths, answers), 16, 0, teacher_arrays([pairs[3]] * len(lengths), [0] * len(lengths))), 0)
    logits.requires_grad_(True)
    zero = teacher_loss(logits, label_positions(plain["labels"]), plain)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_the_loss_moves_a_models_option_distribution_to_the_teachers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    # the prompt's first token says which option the teacher favours; the answers themselves are noise
    rng = np.random.default_rng(0)

    def batch(n=16):
        cues = rng.integers(0, 3, n)
        exs = [([10 + int(c)] + rng.integers(20, 39, 6).tolist() + [DIGITS[str(rng.integers(1, 4))], 2],) for c in cues]
        exs = [(ids, [IGNORE_INDEX] * 7 + ids[7:]) for (ids,) in exs]
        return collate_rows(single_rows(exs, teacher_arrays([teacher_of(int(c)) for c in cues], [0] * n)), 0), cues

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        b, _ = batch()
        keep = label_positions(b["labels"])
        loss = teacher_loss(model(input_ids=b["input_ids"], logits_to_keep=keep).logits, keep, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    b, cues = batch(60)
    keep = label_positions(b["labels"])
    logits = model(input_ids=b["input_ids"], logits_to_keep=keep).logits[:, 0, [DIGITS["1"], DIGITS["2"], DIGITS["3"]]]
    assert (logits.argmax(1).numpy() == cues).mean() > 0.9  # the teacher's option, read from the prompt


def test_only_sft_runs_with_a_weight_use_the_teacher_and_it_refuses_the_prompt_loss():
    from socrates_ray.config import load_config
    from socrates_ray.config.loading import ConfigError
    from socrates_ray.train.datasets import anchor_teacher_weights, paired_cells

    assert anchor_teacher_weights(load_config(None, [])) == (0, 0)  # off by default
    assert anchor_teacher_weights(load_config(None, ["train.anchor_teacher.weight=2"])) == (2, 0)
    contrast = load_config(None, ["train.anchor_teacher.contrast=50"])  # the contrast alone still fits the anchor
    assert anchor_teacher_weights(contrast) == (0, 50) and paired_cells(contrast)
    assert not paired_cells(load_config(None, ["train.anchor_teacher.weight=2"]))
    assert anchor_teacher_weights(load_config(None, ["train.anchor_teacher.weight=2", "train.method=dpo"])) == (0, 0)
    for term in ("weight", "contrast"):
        with pytest.raises(ConfigError, match="prompt_loss_weight"):
            load_config(None, [f"train.anchor_teacher.{term}=2", "train.prompt_loss_weight=0.1"])


def test_the_paired_shuffle_puts_each_cells_rows_two_by_two():
    keys = [k for k, n in enumerate([1, 2, 3, 4, 5, 7]) for _ in range(n)]
    order = paired_order(keys, seed=0)
    assert sorted(order.tolist()) == list(range(len(keys)))  # every row once
    same = [keys[order[i]] == keys[order[i + 1]] for i in range(0, len(order), 2)]
    assert sum(same) == sum(n // 2 for n in [1, 2, 3, 4, 5, 7])  # every pair a cell can make, made
    assert paired_order(keys, seed=0).tolist() == order.tolist() and paired_order(keys, seed=1).tolist() != order.tolist()
    rows = [{"study_id": s, "condition_num": c, "task_num": t} for s, c, t in [("a", 0, 0), ("a", 0, 0), ("a", 1, 0), ("b", 0, 0)]]
    k = cell_keys(rows)
    assert k[0] == k[1] and len(set(k)) == 3 and all(0 <= x < 2**31 for x in k)


def test_the_contrast_scores_only_departures_from_the_cells_mean():
    expected = torch.tensor([0.2, 0.4, 0.5, 0.5, 0.9])
    target = torch.tensor([0.7, 0.9, 0.3, 0.6, 0.1])
    cell = torch.tensor([1, 1, 2, 2, 3])
    # cell 1 departs exactly as the target does (the level is off: no matter); cell 2 ignores the persona;
    # cell 3 has no second example in the batch and is left out
    assert float(within_cell_contrast(expected, target, cell)) == pytest.approx((0 + 0 + 0.15**2 + 0.15**2) / 4)
    assert within_cell_contrast(expected, target, torch.tensor([1, 2, 3, 4, 5])) is None


@pytest.mark.parametrize("packed", [True, False])
def test_the_contrast_reads_each_examples_teacher_and_cell(packed):
    lengths, answers = [9, 5, 7, 4, 6], ["1", "2", "3", "1", "2"]
    pairs = [teacher_of(k) for k in range(len(lengths))]  # teacher positions 0, 0.5, 1, 0, 0.5
    cells = [7, 7, 9, 9, 11]
    extras = teacher_arrays(pairs, cells)
    exs = examples(lengths, answers)
    rows = pack_rows(exs, 16, 0, extras) if packed else single_rows(exs, extras)
    batch = collate_rows(rows, 0)
    keep = label_positions(batch["labels"])

    def logits_for(option_of):
        """Logits that put each example k's mass on option option_of(k) (0-based)."""
        logits = torch.full((len(rows), len(keep), 64), -30.0)
        for r, row in enumerate(rows):
            for e in range(int(row.seq_ids.max())):
                start = int(np.flatnonzero(row.seq_ids == e + 1)[0])
                at = start + int(np.flatnonzero(row.labels[start:] != IGNORE_INDEX)[0]) - 1
                k = [k for k, (i, _) in enumerate(exs) if len(i) == int((row.seq_ids == e + 1).sum())][0]
                logits[r, int((keep == at).nonzero())] = torch.where(torch.arange(64) == DIGITS[str(1 + option_of(k))], 30.0, -30.0)
        return logits

    assert float(contrast_loss(logits_for(lambda k: k % 3), keep, batch)) < 1e-6  # as the teacher
    # every example one option up (clipped at the top): cell 7 keeps its departures, cell 9's halve (+-0.5 -> +-0.25)
    up = float(contrast_loss(logits_for(lambda k: min(k % 3 + 1, 2)), keep, batch))
    assert up == pytest.approx(2 * 0.25**2 / 4, abs=1e-4)
    # the persona ignored (one option for all): the teacher's departures, +-0.25 in cell 7 and +-0.5 in cell 9
    assert float(contrast_loss(logits_for(lambda k: 1), keep, batch)) == pytest.approx((2 * 0.25**2 + 2 * 0.5**2) / 4, abs=1e-4)


def test_the_contrast_teaches_a_persona_by_stimulus_interaction_the_soft_label_leaves_out():
    """Each prompt names a stimulus (token 10 or 11) and a persona (12 or 13); the teacher favours the
    top option where they match, the bottom one where they do not, with the stimulus's level on top.
    Trained on the contrast alone, the model orders the personas of each stimulus the teacher's way."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    rng = np.random.default_rng(0)

    def batch(n=8):
        stim = np.repeat(rng.integers(0, 2, n), 2)  # pairs of one cell with both personas
        persona = np.tile([0, 1], n)
        exs, teach = [], []
        for s, p in zip(stim, persona):
            ids = [10 + int(s), 12 + int(p)] + rng.integers(20, 39, 4).tolist() + [DIGITS["1"], 2]
            exs.append((ids, [IGNORE_INDEX] * 6 + ids[6:]))
            probs = [0.1, 0.2, 0.7] if s == p else [0.6, 0.3, 0.1]
            teach.append(([DIGITS["1"], DIGITS["2"], DIGITS["3"]] + [IGNORE_INDEX] * (TEACHER_WIDTH - 3), probs + [0.0] * (TEACHER_WIDTH - 3)))
        return collate_rows(single_rows(exs, teacher_arrays(teach, stim.tolist())), 0), stim, persona

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        b, _, _ = batch()
        keep = label_positions(b["labels"])
        loss = contrast_loss(model(input_ids=b["input_ids"], logits_to_keep=keep).logits, keep, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    b, stim, persona = batch(30)
    keep = label_positions(b["labels"])
    q = torch.softmax(model(input_ids=b["input_ids"], logits_to_keep=keep).logits[:, 0, [DIGITS["1"], DIGITS["2"], DIGITS["3"]]], 1)
    position = (q * torch.tensor([0.0, 0.5, 1.0])).sum(1).detach().numpy()
    gap = position[1::2] - position[::2]  # persona 1 minus persona 0, within each cell
    assert (gap[stim[::2] == 1] > 0.2).all() and (gap[stim[::2] == 0] < -0.2).all()  # the teacher's gap: +-0.45
