"""Does a tiny-model recipe read the prompt, step by step? One process, no Ray (bench/recipe.py's batches).

    .venv/bin/python bench/recipe_probe.py --mode lora --lr 5e-4 --steps 400     # the demo's recipe
    .venv/bin/python bench/recipe_probe.py --mode lora --lr 2e-3 --steps 400     # the former one
    .venv/bin/python bench/recipe_probe.py --mode full --lr 1e-3 --steps 600     # full finetuning from scratch

Trains on <setting>/train of a prepared demo world (all labels: answer + end of turn) and every
--probe_every steps prints the mean training loss and a probe: for up to 6 rows of every training
cell with a single-token scale (1-2 ... 1-9), the predicted mean position on the scale, demeaned
within each scale, correlated with the true cell mean from ground_truth.parquet; and the sd of the
predicted cell means against the true ones. A recipe that reads the prompt shows the correlation
climbing; one that learned the per-scale answer marginal stays near 0.
"""
import argparse, time, sys, collections
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from recipe import batches, LORA_TARGETS
from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.tokenize import Encoder
from socrates_ray.eval.job import load_truth
from socrates_ray.eval.simulate import load_split_rows
from socrates_ray.models import build_tiny_tokenizer
p = argparse.ArgumentParser()
p.add_argument("--prepared", default="runs/demo/prepared"); p.add_argument("--raw", default="runs/demo/synth")
p.add_argument("--setting", default="all_settings"); p.add_argument("--mode", default="full")
p.add_argument("--hidden", type=int, default=128); p.add_argument("--heads", type=int, default=4); p.add_argument("--layers", type=int, default=2)
p.add_argument("--steps", type=int, default=1000); p.add_argument("--batch", type=int, default=16); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--wd", type=float, default=0.0); p.add_argument("--probe_every", type=int, default=100); p.add_argument("--rank", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--targets", default=",".join(LORA_TARGETS)); p.add_argument("--save", default=""); p.add_argument("--rslora", type=int, default=0); p.add_argument("--alpha", type=float, default=0); p.add_argument("--init_std", type=float, default=0.02); p.add_argument("--warm", type=int, default=20)
a = p.parse_args()
torch.set_num_threads(2); torch.manual_seed(a.seed)
from transformers import Qwen2Config, Qwen2ForCausalLM
rows = load_split_rows(a.prepared, a.setting, "train", None).to_pylist()
rows = [r for r in rows if r["scale_low"] is not None]
tok = build_tiny_tokenizer(iter([DEFAULT_SYSTEM_PROMPT] + [f"{r['prompt']}\n{r['response']}" for r in rows[:3000]]), 2048)
enc = Encoder(tok, DEFAULT_SYSTEM_PROMPT)
ex = enc.encode([r["prompt"] for r in rows], [str(r["response"]) for r in rows])
print("rows", len(rows), "mean tokens", np.mean([len(x) for x, _ in ex]), flush=True)
truth = load_truth(a.raw)
# probe rows: single-token scales, up to 6 per cell
digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
cells = collections.defaultdict(list)
for i, r in enumerate(rows):
    if r["scale_high"] <= 9: cells[(r["study_id"], r["condition_num"], r["task_num"])].append(i)
probe = [(k, v[:6]) for k, v in cells.items()]
def true_mean(key, lo, hi):
    opts, probs = truth[key]; return float(np.dot(probs, (np.asarray(opts) - lo) / (hi - lo)))
cfg = Qwen2Config(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
    num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=2048, tie_word_embeddings=True,
    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None, initializer_range=a.init_std)
model = Qwen2ForCausalLM(cfg)
if a.mode == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha or a.rank, lora_dropout=0.0, use_rslora=bool(a.rslora), target_modules=a.targets.split(","), modules_to_save=[m for m in a.save.split(",") if m] or None))
params = [q for q in model.parameters() if q.requires_grad]
core = model.get_base_model() if hasattr(model, "get_base_model") else model
@torch.no_grad()
def run_probe():
    model.eval(); pred, true, keys = [], [], []
    for key, idx in probe:
        r0 = rows[idx[0]]; lo, hi = r0["scale_low"], r0["scale_high"]
        k = (r0["study_id"], r0["condition_num"], r0["task_num"])
        if k not in truth: continue
        seqs = [ex[i][0] for i in idx]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), enc.pad_id); mask = torch.zeros_like(ids)
        ans = []
        for j, s in enumerate(seqs):
            lab = ex[idx[j]][1]; first = next(t for t, l in enumerate(lab) if l != -100)
            ids[j, :len(s)] = torch.tensor(s); mask[j, :len(s)] = 1; ans.append(first - 1)
        h = core.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = core.lm_head(h[torch.arange(len(seqs)), ans])[:, [digit_ids[d] for d in range(lo, hi + 1)]]
        pr = logits.softmax(-1).numpy(); pos = (np.arange(lo, hi + 1) - lo) / (hi - lo)
        pred.append(float((pr @ pos).mean())); true.append(true_mean(k, lo, hi)); keys.append(hi - lo)
    model.train(); pred, true, keys = map(np.asarray, (pred, true, keys))
    # within-scale: demean per scale
    pw, tw = pred.copy(), true.copy()
    for s in set(keys): m = keys == s; pw[m] -= pw[m].mean(); tw[m] -= tw[m].mean()
    return np.corrcoef(pw, tw)[0, 1], pw.std(), tw.std()
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warm))
rng = np.random.default_rng(a.seed); step, losses, t0 = 0, [], time.time()
model.train()
while step < a.steps:
    for ids, mask, labels in batches(ex, a.batch, enc.pad_id, rng):
        h = core.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        tg = labels[:, 1:]; keep = tg != -100
        loss = torch.nn.functional.cross_entropy(core.lm_head(h[keep]), tg[keep])
        loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step(); opt.zero_grad()
        losses.append(loss.item()); step += 1
        if step % a.probe_every == 0:
            c, ps, ts = run_probe()
            print(f"step {step} loss {np.mean(losses[-a.probe_every:]):.3f} probe corr {c:+.3f} spread {ps:.3f} (true {ts:.3f}) {time.time()-t0:.0f}s", flush=True)
        if step >= a.steps: break
