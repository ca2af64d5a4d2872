"""DPO's pieces: pairs that never repeat the chosen answer or cross a cell and keep the chosen
participant's persona; the loss is log 2 where the policy is the reference and falls as the policy
prefers the chosen answer; the reference scorer and the loop compute the same log-probabilities."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from socrates_ray.data.pairs import build_pairs
from socrates_ray.data.tokenize import Encoder, collate_pairs
from socrates_ray.train.dpo_loop import dpo_loss


def rows_of(cells: dict[tuple[str, int, int], list[int]]) -> pa.Table:
    out = {k: [] for k in ("study_id", "sample_id", "participant", "condition_num", "task_num", "prompt", "answer", "response")}
    sample = 0
    for (study, cond, task), answers in cells.items():
        for person, a in enumerate(answers):
            out["study_id"].append(study)
            out["sample_id"].append(sample)
            out["participant"].append(person)
            out["condition_num"].append(cond)
            out["task_num"].append(task)
            out["prompt"].append(f"persona {study}/{person} stimulus {cond}/{task}")
            out["answer"].append(str(a))
            out["response"].append(a)
            sample += 1
    return pa.table(out)


def test_pairs_never_repeat_the_answer_never_cross_a_cell_and_keep_the_persona():
    rows = rows_of({("s", 1, 1): [1, 2, 2, 5, 7], ("s", 2, 1): [3, 3, 3], ("t", 1, 1): [4], ("t", 1, 2): [1, 7]})
    pairs, stats = build_pairs(rows, seed=0, per_row=2)
    assert stats.rows == 11 and stats.skipped == {"same_answers": 3, "alone": 1}
    by_row = {(s, c, k, p): (prompt, a) for s, c, k, p, prompt, a in zip(*(rows[n].to_pylist() for n in (
        "study_id", "condition_num", "task_num", "participant", "prompt", "response")))}
    cell_answers = {}
    for (s, c, k, _), (_, a) in by_row.items():
        cell_answers.setdefault((s, c, k), set()).add(a)
    for r in pairs.to_pylist():
        prompt, mine = by_row[(r["study_id"], r["condition_num"], r["task_num"], r["participant"])]
        assert r["prompt"] == prompt and r["chosen_response"] == mine and r["chosen"] == str(mine)  # the chosen participant's persona
        assert r["rejected_response"] != mine and r["rejected_response"] in cell_answers[(r["study_id"], r["condition_num"], r["task_num"])]
    # two pairs a row where two other answers exist, each rejected answer once
    firsts = [r for r in pairs.to_pylist() if (r["study_id"], r["condition_num"], r["participant"]) == ("s", 1, 0)]
    assert len(firsts) == 2 and len({r["rejected"] for r in firsts}) == 2
    assert stats.pairs == pairs.num_rows == 5 * 2 + 2
    again, _ = build_pairs(rows, seed=0, per_row=2)
    assert again.equals(pairs)


def test_distance_weighting_prefers_far_answers():
    rows = rows_of({("s", 1, 1): [1] + [2] * 20 + [7] * 20})
    uniform = [build_pairs(rows, seed=s)[0].to_pylist()[0]["rejected_response"] for s in range(200)]
    distance = [build_pairs(rows, seed=s, rejected="distance")[0].to_pylist()[0]["rejected_response"] for s in range(200)]
    assert abs(uniform.count(7) / 200 - 0.5) < 0.12  # as often as people gave it
    assert distance.count(7) / 200 > 0.8  # weighted 6:1 against the near answer


def test_the_loss_is_log_2_where_the_policy_is_the_reference():
    torch.manual_seed(0)
    policy = torch.randn(8, dtype=torch.float64) * 5 - 10
    counts = torch.full((8,), 2)
    loss, accuracy, margin = dpo_loss(policy, counts, policy[:4], policy[4:], beta=0.1, sft_weight=0.0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-12) and float(margin) == pytest.approx(0.0)
    better = policy.clone()
    better[:4] += 1.0  # the chosen answers more likely than under the reference
    loss2, accuracy2, margin2 = dpo_loss(better, counts, policy[:4], policy[4:], beta=0.1, sft_weight=0.0)
    assert float(loss2) < math.log(2) and float(accuracy2) == 1.0 and float(margin2) == pytest.approx(1.0)
    with_sft, *_ = dpo_loss(policy, counts, policy[:4], policy[4:], beta=0.1, sft_weight=0.5)
    assert float(with_sft) == pytest.approx(math.log(2) + 0.5 * float((-policy[:4] / 2).mean()))


def test_the_reference_scorer_and_the_policy_forward_agree(tiny_model):
    """Where the policy's weights are the reference's, the loop's log-probabilities equal the
    scorer's: the DPO loss of a real batch is log 2 (LoRA and full)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from socrates_ray.models import load_tokenizer
    from socrates_ray.train.pairs_dataset import ReferenceScorer, tokenize_pairs
    from socrates_ray.train.steps import sequence_logps

    encoder = Encoder(load_tokenizer(str(tiny_model)), "You answer surveys.")
    pairs = pa.table({"prompt": ["A person aged 30. How much? Only return 1 to 7.", "Someone else. Agree? 1 or 2."],
                      "chosen": ["3", "1"], "rejected": ["6", "2"]})
    table, left_out = tokenize_pairs(pairs, encoder, 512)
    assert left_out == 0 and table.num_rows == 2
    scorer = ReferenceScorer(str(tiny_model), None, False, False, encoder.pad_id, "dense", 4)
    scored = scorer(table)
    batch = collate_pairs(scored.to_pydict(), encoder.pad_id)
    for lora in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if lora:  # a fresh adapter (B = 0) leaves the model's outputs as they are
            model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        model.train()
        policy, counts = sequence_logps(model, batch, torch.float32)
        loss, _, _ = dpo_loss(policy, counts, batch["ref_chosen"], batch["ref_rejected"], beta=0.1, sft_weight=0.0)
        assert float(loss) == pytest.approx(math.log(2), abs=1e-5)
        assert (counts == 2).all()  # one answer token and the end of turn
