"""The persona probe (train.persona_probe): its targets travel with packed rows to the right
examples, its loss reaches attention, and it rejects what it cannot read."""

import numpy as np
import pytest
import torch

from socrates_ray.data.prompts import PERSONA_ORDER
from socrates_ray.data.tokenize import IGNORE_INDEX, answer_positions, collate_rows, pack_rows, persona_classes, single_rows
from socrates_ray.train.persona_probe import PersonaProbe, PersonaProbeError

F = len(PERSONA_ORDER)


def test_persona_classes_hash_each_field_and_leave_empty_fields_out():
    a = persona_classes({"age": 30, "party_id": "Strong Democrat", "ideology": " "}, 64)
    assert len(a) == F and all(0 <= c < 64 for c in a if c != IGNORE_INDEX)
    assert a[PERSONA_ORDER.index("ideology")] == IGNORE_INDEX  # blank, like a missing field
    assert a[PERSONA_ORDER.index("gender")] == IGNORE_INDEX
    assert persona_classes({"age": 30}, 64)[0] == a[0]  # a value's class does not depend on the others
    b = persona_classes({"age": 31, "party_id": "Strong Republican"}, 64)
    assert b[PERSONA_ORDER.index("party_id")] != a[PERSONA_ORDER.index("party_id")]
    assert persona_classes(None, 8) == [IGNORE_INDEX] * F


def examples(lengths):
    """(input_ids, labels): a prompt of n - 2 tokens, then an answer and an end-of-turn token."""
    return [(list(range(1, n + 1)), [IGNORE_INDEX] * (n - 2) + [n - 1, n]) for n in lengths]


def test_packed_rows_carry_each_examples_classes_to_its_answer_position():
    lengths = [9, 5, 7, 4, 6]
    classes = [[i] * F for i in range(len(lengths))]  # example i's fields are all class i
    rows = pack_rows(examples(lengths), 16, 0, {"persona": classes})
    batch = collate_rows(rows, 0)
    b, t, k = answer_positions(batch["labels"])
    targets = batch["persona"].view(len(rows), -1, F)[b, k]
    assert len(b) == len(lengths)
    for row, pos, target in zip(b.tolist(), t.tolist(), targets):
        # the position that predicts the answer is the last prompt token of the example it belongs to
        seq = batch["seq_ids"][row]
        example_in_row = rows[row].seq_ids[pos] - 1
        assert batch["labels"][row, pos] == IGNORE_INDEX and batch["labels"][row, pos + 1] != IGNORE_INDEX
        assert seq[pos] == seq[pos + 1]
        # ... and its targets are that example's classes
        members = [c for c in rows[row].persona.reshape(-1, F)[:, 0]]
        assert torch.equal(target, torch.full((F,), int(members[example_in_row])))
    assert sorted(int(x[0]) for x in targets) == list(range(len(lengths)))  # every example exactly once
    # rows with fewer examples are padded with IGNORE_INDEX, never another example's classes
    widths = [len(r.persona) for r in rows]
    assert batch["persona"].shape[1] == max(widths)
    for r, w in enumerate(widths):
        assert (batch["persona"][r, w:] == IGNORE_INDEX).all()


def test_rows_without_classes_collate_as_before():
    batch = collate_rows(single_rows(examples([6, 8])), 0)
    assert "persona" not in batch and set(batch) == {"input_ids", "labels", "position_ids", "seq_ids"}


def tiny(hidden=32, layers=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))


def test_the_probe_loss_reaches_attention_and_falls_when_the_persona_is_in_the_prompt():
    model = tiny()
    probe = PersonaProbe(model, weight=1.0, until=0.5, layer=-1, buckets=4, total_steps=100)
    assert probe.weight_at(0) == 1.0 and probe.weight_at(25) == 0.5 and probe.weight_at(50) == probe.weight_at(99) == 0.0
    assert "persona_probe.weight" in dict(model.named_parameters())
    rng = np.random.default_rng(0)

    def batch():
        # the persona (field 0's class) is token 10 + class at the start; the answer comes 8 tokens later
        cls = rng.integers(0, 4, 8)
        ids = [[10 + int(c)] + rng.integers(20, 50, 7).tolist() + [3, 2] for c in cls]
        rows = single_rows([(i, [IGNORE_INDEX] * 8 + i[8:]) for i in ids],
                           {"persona": [[int(c)] + [IGNORE_INDEX] * (F - 1) for c in cls]})
        return collate_rows(rows, 0)

    first = batch()
    model(input_ids=first["input_ids"])
    loss_before = loss = probe.loss(first)
    loss.backward()
    attention = model.model.layers[0].self_attn.q_proj.weight.grad
    assert attention is not None and attention.abs().sum() > 0  # the probe asks the layers below to carry the persona
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        b = batch()
        model(input_ids=b["input_ids"])
        loss = probe.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert float(loss_before) > 1.2 and np.mean(losses[-10:]) < 0.3  # chance is ln 4 = 1.39


def test_the_probe_refuses_a_layer_the_model_does_not_have_and_a_batch_without_classes():
    with pytest.raises(PersonaProbeError, match="layers"):
        PersonaProbe(tiny(), 1.0, 0.5, layer=2, buckets=4, total_steps=10)
    model = tiny()
    probe = PersonaProbe(model, 1.0, 0.5, layer=0, buckets=4, total_steps=10)
    b = collate_rows(single_rows(examples([6])), 0)
    model(input_ids=b["input_ids"])
    with pytest.raises(PersonaProbeError, match="persona"):
        probe.loss(b)


@pytest.mark.parametrize("finetuning", ["lora", "full"])
def test_the_export_never_contains_the_probe(tmp_path, finetuning):
    from types import SimpleNamespace

    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from socrates_ray.train.checkpoint import export_model

    model = tiny()
    if finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    PersonaProbe(model, 1.0, 0.5, layer=-1, buckets=4, total_steps=10)
    assert any(n.endswith("persona_probe.weight") for n, _ in model.named_parameters())
    engine = SimpleNamespace(module=model, zero_optimization_stage=lambda: 2)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    export_model(engine, tmp_path / "export", finetuning, 0, tokenizer)
    (weights,) = (tmp_path / "export").glob("*.safetensors")
    keys = set(load_file(weights))
    assert keys and not any("persona_probe" in k for k in keys)
    if finetuning == "full":  # an ordinary model: it loads with no missing or unexpected weights
        from transformers import AutoModelForCausalLM

        _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "export", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]


def test_only_sft_runs_with_a_weight_carry_persona_classes():
    from socrates_ray.config import load_config
    from socrates_ray.train.datasets import persona_buckets

    def buckets(*overrides):
        return persona_buckets(load_config(None, list(overrides)))

    assert buckets() == 0  # off by default: rows carry no classes, and runs from before it resume
    assert buckets("train.persona_probe.weight=0.5", "train.persona_probe.buckets=32") == 32
    assert buckets("train.persona_probe.weight=0.5", "train.method=dpo") == 0  # DPO has a loss of its own
