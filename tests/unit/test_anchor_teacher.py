"""The anchor teacher (train.anchor_teacher): the regression anchor's distribution over each training
row's options travels with packed rows to that example's answer position, the loss pulls the model's
option distribution there, and rows it cannot teach are left to their answers."""

import numpy as np
import pytest
import torch

from socrates_ray.data.tokenize import IGNORE_INDEX, collate_rows, pack_rows, single_rows
from socrates_ray.eval.anchor import fit_anchor, option_distributions
from socrates_ray.train.anchor_teacher import TEACHER_WIDTH, teacher_arrays, teacher_loss, teacher_targets
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
    extras = teacher_arrays(pairs)
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
    plain = collate_rows(pack_rows(examples(lengths, answers), 16, 0, teacher_arrays([pairs[3]] * len(lengths))), 0)
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
        return collate_rows(single_rows(exs, teacher_arrays([teacher_of(int(c)) for c in cues])), 0), cues

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
    from socrates_ray.train.datasets import anchor_teacher_weight

    assert anchor_teacher_weight(load_config(None, [])) == 0  # off by default
    assert anchor_teacher_weight(load_config(None, ["train.anchor_teacher.weight=2"])) == 2
    assert anchor_teacher_weight(load_config(None, ["train.anchor_teacher.weight=2", "train.method=dpo"])) == 0
    with pytest.raises(ConfigError, match="prompt_loss_weight"):
        load_config(None, ["train.anchor_teacher.weight=2", "train.prompt_loss_weight=0.1"])
