import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.prompts import build_messages
from socrates_ray.data.tokenize import (
    IGNORE_INDEX, Encoder, PortableEncoder, collate, pack_rows, packed_attention_mask, single_rows,
)

PROMPTS = [
    "You are a survey respondent with the following demographic profile:\n- Age: 40\n\nRead the question. Only return an integer from 1 to 7.",
    "You are a survey respondent with the following demographic profile:\n- Age: 71\n- Gender: Female\n\nHow many dollars? Only return an integer representing dollars.",
    "Short one. Only return 1 if Yes or 2 if No.",
    "You are a survey respondent.\n- Party Id: Strong Republican\nOn a scale from 0 to 100, only return the number.",
]
ANSWERS = ["5", "250", "1", "100"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return Encoder(tokenizer, DEFAULT_SYSTEM_PROMPT)


def test_prefix_equals_the_chat_template(encoder, tokenizer):
    for p in PROMPTS:
        expected = tokenizer.apply_chat_template(build_messages(p, DEFAULT_SYSTEM_PROMPT), tokenize=False, add_generation_prompt=True)
        assert encoder.prefix_text(p) == expected


def test_loss_only_on_answer_and_end_of_turn(encoder, tokenizer):
    for (ids, labels), answer in zip(encoder.encode(PROMPTS, ANSWERS), ANSWERS):
        assert len(ids) == len(labels)
        labelled = [t for t in labels if t != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == answer + "<|im_end|>"
        # labelled tokens are exactly the tail of the input
        assert ids[-len(labelled):] == labelled
        assert all(t == IGNORE_INDEX for t in labels[: -len(labelled)])
    # multi-digit answers are several tokens (digits split), all labelled
    ids, labels = encoder.encode([PROMPTS[0]], ["100"])[0]
    assert sum(t != IGNORE_INDEX for t in labels) == 4


def test_the_portable_encoder_encodes_as_transformers_does_or_is_not_offered(encoder, tiny_model, tmp_path):
    """Tokenizer actors encode with the `tokenizers` library alone (no transformers import): the same
    ids and labels for every prompt, else the driver offers no portable encoding."""
    values = encoder.portable(str(tiny_model / "tokenizer.json"), list(zip(PROMPTS, ANSWERS)))
    assert values is not None
    portable = PortableEncoder(**values)
    texts = [*PROMPTS, "Line one\n\n\tline two \u00e9\u2014\u2019 <|im_end|> 12,345.6%", ""]
    answers = [*ANSWERS, "Strongly disagree", "0"]
    assert portable.encode(texts, answers) == encoder.encode(texts, answers)
    assert portable.pad_id == encoder.pad_id and portable.eot_ids == encoder.eot_ids
    assert encoder.portable(str(tmp_path / "tokenizer.json")) is None  # a tokenizer without tokenizer.json
    # a tokenizer.json that encodes differently (another vocabulary) is caught by the check
    import json

    other = json.loads((tiny_model / "tokenizer.json").read_text())
    vocab = other["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(other))
    assert encoder.portable(str(tmp_path / "tokenizer.json"), list(zip(PROMPTS, ANSWERS))) is None


def test_packing_keeps_every_example_whole(encoder):
    examples = encoder.encode(PROMPTS * 5, ANSWERS * 5)
    longest = max(len(e[0]) for e in examples)
    rows = pack_rows(examples, 3 * longest, encoder.pad_id)
    assert len(rows) < len(examples)
    assert sum(r.num_tokens for r in rows) == sum(len(e[0]) for e in examples)
    recovered = []
    for r in rows:
        assert len(r.input_ids) == 3 * longest
        for k in range(1, r.seq_ids.max() + 1):
            idx = np.flatnonzero(r.seq_ids == k)
            assert (np.diff(idx) == 1).all() and (r.position_ids[idx] == np.arange(len(idx))).all()
            recovered.append((r.input_ids[idx].tolist(), r.labels[idx].tolist()))
        assert (r.labels[r.seq_ids == 0] == IGNORE_INDEX).all()
    assert sorted(recovered) == sorted((list(a), list(b)) for a, b in examples)


def test_packed_examples_do_not_attend_to_each_other(encoder, tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = encoder.encode(PROMPTS, ANSWERS)
    rows = pack_rows(examples, sum(len(e[0]) for e in examples) + 7, encoder.pad_id)
    assert len(rows) == 1 and rows[0].seq_ids.max() == len(PROMPTS)
    batch = collate({k: [getattr(r, k) for r in rows] for k in ("input_ids", "labels", "position_ids", "seq_ids")}, encoder.pad_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["seq_ids"]), position_ids=batch["position_ids"]).logits[0]
        for k in range(1, len(PROMPTS) + 1):
            idx = np.flatnonzero(rows[0].seq_ids == k)
            ids = rows[0].input_ids[idx].tolist()
            assert ids in [e[0] for e in examples]
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(packed[torch.from_numpy(idx)], alone, atol=1e-4, rtol=1e-4)


def test_collate_pads_to_longest_or_to_max_length(encoder):
    rows = single_rows(encoder.encode(PROMPTS, ANSWERS))
    batch = {k: [getattr(r, k) for r in rows] for k in ("input_ids", "labels", "position_ids", "seq_ids")}
    longest = max(len(r.input_ids) for r in rows)
    out = collate(batch, encoder.pad_id)
    assert out["input_ids"].shape == (4, longest)
    assert int((out["seq_ids"] > 0).sum()) == sum(len(r.input_ids) for r in rows)
    assert (out["labels"][out["seq_ids"] == 0] == IGNORE_INDEX).all()
    assert collate(batch, encoder.pad_id, pad_to=longest + 10)["input_ids"].shape == (4, longest + 10)
    with pytest.raises(ValueError, match="exceeds pad_to"):
        collate(batch, encoder.pad_id, pad_to=longest - 1)


def test_tiny_model_folder_is_an_ordinary_hf_model(tiny_model):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_model).model_type == "qwen2"
    assert (tiny_model / "model.safetensors").is_file() and (tiny_model / "tokenizer.json").is_file()


def test_row_plans_hold_every_example_once_within_the_row_and_never_need_more_rows_than_first_fit():
    from socrates_ray.data.packing import first_fit, plan_rows

    rng = np.random.default_rng(0)
    cases = [
        rng.normal(304, 25, 2048).clip(266, 373).astype(int),  # alike prompts (the synthetic world's spread)
        rng.lognormal(np.log(350), 0.6, 2048).clip(60, 2048).astype(int),  # a wide spread
        rng.integers(1, 2049, 500),
        np.full(100, 2048),  # each example fills a row
        np.array([7]),
    ]
    for lengths in cases:
        lengths = lengths.tolist()
        rows = plan_rows(lengths, 2048)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 2048 for row in rows)
        longest_first = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        assert len(rows) <= len(first_fit(longest_first, lengths, 2048))
        assert rows == plan_rows(lengths, 2048)  # deterministic
    assert plan_rows([], 2048) == []
    with pytest.raises(ValueError, match=r"1 example\(s\) longer than the row \(2049 > 2048 tokens, first at index 1\)"):
        plan_rows([5, 2049], 2048)


def test_alike_prompts_pack_at_2048_with_under_3_percent_padding():
    """SocSci210-style prompts are alike in length; at 2048 tokens a row takes 6 or 7 of them and
    first-fit decreasing (the packer before) left ~5% of each row empty (95.1% on the ingest bench)."""
    rng = np.random.default_rng(1)
    lengths = rng.normal(304, 25, 2048).clip(266, 373).astype(int)
    examples = [([1] * n, [IGNORE_INDEX] * (n - 1) + [1]) for n in lengths]
    rows = pack_rows(examples, 2048, 0)
    share = sum(r.num_tokens for r in rows) / (len(rows) * 2048)
    assert share >= 0.97, share
