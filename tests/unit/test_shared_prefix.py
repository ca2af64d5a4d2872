"""ingest.layout shared_prefix: a participant's examples in one row behind the prompt tokens they
share, written once. Each example must see exactly what it sees alone (the same tokens at the same
positions), so its answer logits, the loss and the gradients equal the one-example-a-row batch's,
with the dense mask and with one attention call per example."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.ingest import TokenizePack, participant_order
from socrates_ray.data.tokenize import (IGNORE_INDEX, Encoder, collate_rows, common_prefix, shared_prefix_rows,
                                        single_rows)
from socrates_ray.models import load_tokenizer
from socrates_ray.train.steps import forward_loss, label_logits

PERSONAS = ["- Age: 34\n- Party Id: Strong Democrat", "- Age: 71\n- Party Id: Lean Republican\n- Ideology: Moderate",
            "- Age: 25"]
STIMULI = ["The proposal is backed by Democratic leaders.\n\nHow much do you support it? Only return 1 to 5.",
           "Taxes would rise.\n\nHow fair is it? Only return an integer from 1 to 7, nothing else.",
           "How likely are you to vote? Only return 1 to 4."]


class Engine:
    """What forward_loss needs of a DeepSpeed engine: a device and a forward."""

    def __init__(self, model) -> None:
        self.model, self.device = model, "cpu"

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def _examples(tiny_model):
    """Participant 0 answers three questions, participant 1 two, participant 2 one."""
    enc = Encoder(load_tokenizer(str(tiny_model)), DEFAULT_SYSTEM_PROMPT)
    who = [0, 0, 0, 1, 1, 2]
    prompts = [f"{PERSONAS[p]}\n\nRead the question.\n\n{STIMULI[i % 3]}" for i, p in enumerate(who)]
    return enc, enc.encode(prompts, [str(1 + i % 4) for i in range(len(who))]), who


def test_each_example_is_its_prefix_and_its_own_tokens_at_its_own_positions(tiny_model) -> None:
    enc, examples, who = _examples(tiny_model)
    rows = shared_prefix_rows(examples, who, 4096)
    assert len(rows) == 1
    row = rows[0]
    # the prefix-less participant (one example) first, then participant 0's prefix and examples, then participant 1's
    ids, seq, pos, labels = row.input_ids, row.seq_ids, row.position_ids, row.labels
    assert seq[0] == 1 and (seq < 0).sum() > 0 and int(seq.max()) == len(examples)
    rebuilt = {}
    prefix = None
    for k in range(1, len(examples) + 1):
        own = np.flatnonzero(seq == k)
        before = seq[: own[0]]
        prefixes = before[before < 0]
        prefix = np.flatnonzero(seq == prefixes[-1]) if len(prefixes) else np.zeros(0, int)
        rebuilt[k] = (np.concatenate([ids[prefix], ids[own]]).tolist(), np.concatenate([pos[prefix], pos[own]]).tolist(),
                      np.concatenate([labels[prefix], labels[own]]).tolist())
    originals = sorted((tuple(e[0]), tuple(e[1])) for e in examples)
    assert sorted((tuple(i), tuple(lab)) for i, _, lab in rebuilt.values()) == originals
    for ids_k, pos_k, _ in rebuilt.values():
        assert pos_k == list(range(len(ids_k)))  # positions as if alone
    assert row.num_tokens < sum(len(e[0]) for e in examples)  # the shared tokens are written once
    assert (labels[seq < 0] == IGNORE_INDEX).all()  # nothing labelled is shared


def test_a_participant_too_long_for_a_row_is_cut_into_chunks_that_each_repeat_the_prefix(tiny_model) -> None:
    _, examples, who = _examples(tiny_model)
    p = common_prefix(examples[:3])
    longest = max(len(e[0]) for e in examples[:3])
    rows = shared_prefix_rows(examples[:3], who[:3], longest + 5)  # room for the prefix and one example's own tokens
    assert len(rows) == 3 and all(int((r.seq_ids < 0).sum()) == p for r in rows)
    assert sum(int(r.seq_ids.max()) for r in rows) == 3 and all(len(r.input_ids) <= longest + 5 for r in rows)


def test_identical_prompts_keep_their_own_last_prompt_token() -> None:
    same = ([5, 6, 7, 8, 9], [IGNORE_INDEX] * 4 + [9])
    assert common_prefix([same, same]) == 3  # the answer-predicting token (8) stays with each example
    assert common_prefix([same]) == 0


@pytest.mark.parametrize("attention", ["dense", "segments"])
def test_answer_logits_loss_and_gradients_equal_one_example_a_row(tiny_model, attention) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from socrates_ray.train.attention import register

    torch.manual_seed(0)
    enc, examples, who = _examples(tiny_model)
    shared = collate_rows(shared_prefix_rows(examples, who, 4096), enc.pad_id)
    alone = collate_rows(single_rows(examples), enc.pad_id)
    assert int((shared["seq_ids"] != 0).sum()) < int((alone["seq_ids"] != 0).sum())
    implementation = {"attn_implementation": register(attention)} if attention != "dense" else {}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, **implementation)

    def by_example(batch):
        """Each example's label logits, keyed by its label tokens' ids (distinct here)."""
        logits, targets = label_logits(Engine(model), batch, torch.float32, attention)
        out = []
        for r in range(targets.shape[0]):
            keep = targets[r] != IGNORE_INDEX
            out.append(logits[r][keep])
        return torch.cat(out)

    with torch.no_grad():
        mine, theirs = by_example(shared), by_example(alone)
    # the same label positions in a different order: compare as sorted multisets of logit rows
    assert mine.shape == theirs.shape
    assert torch.allclose(mine.sum(0), theirs.sum(0), atol=1e-4)
    assert torch.allclose(torch.sort(mine[:, 0]).values, torch.sort(theirs[:, 0]).values, atol=1e-5)
    loss = forward_loss(Engine(model), shared, torch.float32, attention)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = forward_loss(Engine(model), alone, torch.float32, attention)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-5), (float(loss), float(reference))
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_an_example_reads_its_prefix_and_nothing_of_its_neighbours(tiny_model) -> None:
    """A token of participant 0's first example's own tokens moves that example's answer logits only;
    a token of participant 0's shared persona moves their three examples' and no one else's."""
    import torch
    from transformers import AutoModelForCausalLM

    enc, examples, who = _examples(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)

    def answer_logits(exs):
        with torch.no_grad():
            logits, _ = label_logits(Engine(model), collate_rows(shared_prefix_rows(exs, who, 4096), enc.pad_id), torch.float32)
        return logits[0]  # one row: (label positions, vocab)

    def with_token(members, at):
        changed = list(examples)
        for i in members:
            ids, labels = examples[i]
            changed[i] = (ids[:at] + [(ids[at] + 1) % len(enc.tokenizer)] + ids[at + 1 :], labels)
        return changed

    def moved(changed):
        return ((answer_logits(changed) - answer_logits(examples)).abs().amax(dim=-1) > 1e-6).int().tolist()

    p = common_prefix(examples[:3])
    n = next(i for i, lab in enumerate(examples[0][1]) if lab != IGNORE_INDEX)
    # label positions in row order: participant 2's example (no prefix), then participant 0's three, participant 1's two
    assert moved(with_token([0], n - 2)) == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert moved(with_token([0, 1, 2], p - 1)) == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # their persona, shared
    assert p > 10 and n - 2 >= p


def test_participant_order_keeps_each_participants_rows_together_and_is_seeded() -> None:
    who = [("s", 1), ("s", 1), ("t", 1), ("s", 2), ("s", 1), ("t", 1), ("s", 3)]
    order = participant_order(who, seed=0)
    assert sorted(order.tolist()) == list(range(len(who)))
    runs = [who[i] for i in order]
    seen = []
    for w in runs:
        if not seen or seen[-1] != w:
            assert w not in seen  # a participant appears in one run
            seen.append(w)
    assert [i for i in order if who[i] == ("s", 1)] == [0, 1, 4]  # their own order
    assert participant_order(who, 0).tolist() == order.tolist()
    assert any(participant_order(who, s).tolist() != order.tolist() for s in range(1, 6))


def test_tokenize_pack_shares_prefixes_and_counts_samples_and_tokens(tiny_model) -> None:
    prompts = [f"{PERSONAS[p]}\n\nRead the question.\n\n{STIMULI[i % 3]}" for i, p in enumerate([0, 0, 0, 1, 1, 2])]
    batch = pa.table({"prompt": prompts, "answer": ["1", "2", "3", "4", "1", "2"],
                      "study_id": ["a"] * 6, "participant": [0, 0, 0, 1, 1, 2]})
    shared = TokenizePack(str(tiny_model), DEFAULT_SYSTEM_PROMPT, 4096, "shared_prefix")(batch)
    alone = TokenizePack(str(tiny_model), DEFAULT_SYSTEM_PROMPT, 4096, "pad_longest")(batch)
    assert sum(shared["num_samples"].to_pylist()) == 6 == sum(alone["num_samples"].to_pylist())
    assert sum(shared["num_tokens"].to_pylist()) < 0.8 * sum(alone["num_tokens"].to_pylist())


def test_shared_prefix_refuses_what_cannot_read_a_prefix() -> None:
    import torch

    from socrates_ray.config import load_config
    from socrates_ray.train.attention import varlen_arguments

    with pytest.raises(ValueError, match="varlen"):
        load_config(None, ["ingest.layout=shared_prefix", "train.attention=varlen", "train.use_gpu=true", "train.precision=bf16"])
    with pytest.raises(ValueError, match="contrast"):
        load_config(None, ["ingest.layout=shared_prefix", "train.anchor_teacher.contrast=40"])
    assert load_config(None, ["ingest.layout=shared_prefix", "train.attention=segments"]).ingest.layout == "shared_prefix"
    with pytest.raises(ValueError, match="shared prefix"):
        varlen_arguments(torch.tensor([[-1, -1, 1, 1, 2, 0]]))
