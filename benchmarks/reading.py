"""How well does one guide configuration learn to read? The lever benchmark of docs/experiments.md's reading table.

  1. Takes a run directory that has been through data, tokenizer and sample (bash train.sh's first stages, or
     `exectune.py data/tokenizer/baselines/sample --run R`).
  2. Builds the training strategies from that run's raw.jsonl with a keep rule (the recipe's own: accepted ones,
     `--keep` / `--select`, `--k` to use only the first k teacher draws of a task), or every teacher strategy
     (`--data raw`), or, flagged as an ORACLE upper bound that no recipe can use, canonical strategies (`--data
     canonical`, numbers) or handle-naming ones (`--data handles`).
  3. Trains a fresh guide with the recipe's own SFT pieces (sft.sft_batch_examples / sft_loss / lr_at,
     AdamW or Muon on the hidden matrices) for --steps or --seconds on --threads threads, and at every eval prints
     one JSON line: exact plans on val (mathsim.plan_matches) overall and by number of operations, mean exact success
     (sim_math.exact_success, the cheap core's chance with those strategies), the core alone's, and useful
     (non-padding) tokens/s. No core is called: the oracles score the greedy val strategies directly.
  4. The initial weights are drawn from --seed like the recipe's, or from --init-seed (the batch order stays --seed's:
     which of the two makes a seed slow), and may be reshaped: --init-scale, --zero-proj.
  5. The accepted strategies include those the sample stage carried over to renamed copies of the problems
     (`sample --renamings`, run_dir.load_renamed_tasks); `--no-renamed` leaves them out.

Every flag defaults to the recipe's SFT setting (sft.SFTConfig), so a lever is one flag away from the default.

Example: python benchmarks/reading.py --run runs/default --eval-every 1000
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch

import evaluate
import families
import model as guide_model
import mathsim
import run_dir
import sample
import sft
import training


def training_strategies(run, train_tasks, a):
    """[(task, strategy)] by the chosen data rule."""
    if a.data in ("canonical", "handles"):
        return [(t, mathsim.canonical_strategy(t, by_handle=a.data == "handles")) for t in train_tasks]
    by_id = {t.id: t for t in train_tasks}
    raw = run_dir.read_jsonl(run.file("raw.jsonl"))
    if a.data == "accepted" and not a.no_renamed:
        raw += sample.renamed_rows(run)
        by_id.update({t.id: t for t in run_dir.load_renamed_tasks(run, by_id)})
    raw = [r for r in raw if a.k is None or r["draw"] < a.k]
    rows = raw if a.data == "raw" else sample.select_accepted(raw, a.keep, a.select)
    return [(by_id[r["task_id"]], r["strategy"]) for r in rows if r["task_id"] in by_id]


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update of each 2-D weight is orthogonalised by 5 Newton-Schulz iterations."""
    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"])       # Nesterov
                x = update / (update.norm() + 1e-7)
                tall = x.size(0) > x.size(1)
                x = x.T if tall else x
                for _ in range(5):
                    gram = x @ x.T
                    x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
                x = x.T if tall else x
                p.add_(x, alpha=-group["lr"] * max(1, p.size(0) / p.size(1)) ** 0.5)


def optimizers(net, a):
    """[(optimizer, base lr)]: AdamW on everything, or Muon on the blocks' matrices with AdamW on the rest."""
    if a.opt == "adamw":
        return [(training.make_optimizer(net, a.lr, 0.1), a.lr)]
    hidden = [p for n, p in net.named_parameters() if p.dim() >= 2 and n.startswith("blocks.")]
    rest = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and n.startswith("blocks."))]
    adam = torch.optim.AdamW([dict(params=[p for p in rest if p.dim() >= 2], weight_decay=0.1),
                              dict(params=[p for p in rest if p.dim() < 2], weight_decay=0.0)],
                             lr=a.lr, betas=(0.9, 0.95))
    return [(Muon(hidden, a.muon_lr), a.muon_lr), (adam, a.lr)]


def lr_scale(step, cfg, schedule):
    """The recipe's warmup + cosine (sft.lr_at), or warmup-stable-decay: flat, then linear to min_lr_ratio
    over the last 20% of the steps."""
    if schedule == "cosine":
        return sft.lr_at(step, cfg, 1.0)
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    decay_from = int(0.8 * cfg.steps)
    if step < decay_from:
        return 1.0
    return 1.0 - (1 - cfg.min_lr_ratio) * (step - decay_from) / max(1, cfg.steps - decay_from)


SFT = sft.SFTConfig()     # the recipe's SFT settings are the benchmark's defaults


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a run directory after data, tokenizer and sample")
    ap.add_argument("--data", default="accepted", choices=["accepted", "raw", "canonical", "handles"],
                    help="canonical and handles are ORACLE targets: upper bounds, not a recipe")
    ap.add_argument("--keep", type=int, default=0, help="accepted strategies kept per task (0: all)")
    ap.add_argument("--select", default="cheapest", choices=sorted(sample.SELECT_RULES))
    ap.add_argument("--k", type=int, default=None, help="use only the first k teacher draws of each task")
    ap.add_argument("--n-train", type=int, default=None, help="use only the first n training tasks")
    ap.add_argument("--no-renamed", action="store_true", help="leave out the accepted strategies carried over to "
                    "renamed copies of the problems (sample --renamings)")
    ap.add_argument("--curriculum", action="store_true", help="the strategies of fewest steps first "
                                                              "(sft.curriculum_pool)")
    ap.add_argument("--steps", type=int, default=SFT.steps)
    ap.add_argument("--seconds", type=float, default=None, help="stop at the first eval past this wall time")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=SFT.batch_size)
    ap.add_argument("--lr", type=float, default=SFT.lr)
    ap.add_argument("--muon-lr", type=float, default=0.02)
    ap.add_argument("--opt", default="adamw", choices=["adamw", "muon"])
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "wsd"])
    ap.add_argument("--warmup", type=int, default=SFT.warmup)
    ap.add_argument("--prompt-loss-weight", type=float, default=SFT.prompt_loss_weight,
                    help="weight of the language-modelling loss on the problem text (exectune sft's flag)")
    ap.add_argument("--n-layer", type=int, default=SFT.n_layer)
    ap.add_argument("--n-embd", type=int, default=SFT.n_embd)
    ap.add_argument("--n-head", type=int, default=SFT.n_head)
    ap.add_argument("--n-kv-head", type=int, default=SFT.n_kv_head)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-seed", type=int, default=None, help="seed of the initial weights alone (default: "
                    "--seed; --seed then orders the batches): tells an unlucky initialisation from an unlucky order")
    ap.add_argument("--init-scale", type=float, default=SFT.init_scale, help="multiply every initial weight "
                    "matrix by this (the same random draw, scaled; 1.0 is the model's own init)")
    ap.add_argument("--zero-proj", action="store_true", help="start the projections into the residual stream "
                    "(attn.proj, mlp.down) at zero, the rest of the draw unchanged")
    ap.add_argument("--lm-only-steps", type=int, default=0, help="a pretraining phase: the first N steps train on "
                    "the problem text alone (the language-modelling loss, no strategy tokens)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.run, "raw.jsonl")) and a.data in ("accepted", "raw"):
        sys.exit(f"error: {a.run}/raw.jsonl not found: run exectune.py data, tokenizer, baselines and sample first")
    torch.set_num_threads(a.threads)
    run = run_dir.Run(a.run)
    tok = run_dir.load_tokenizer(run)
    train_tasks = run_dir.load_tasks(run, "train")[:a.n_train]
    val_tasks = run_dir.load_tasks(run, "val")[:a.n_val]
    eos, pad = tok.encode_single_token("<|eos|>"), tok.encode_single_token("<|pad|>")
    pairs = training_strategies(run, train_tasks, a)
    examples = [(families.prompt_tokens(tok, t), tok.encode(s, disallowed_special=()) + [eos]) for t, s in pairs]
    n_steps = [len(families.family_of(t).parse_strategy(s).steps) for t, s in pairs]
    cfg = sft.SFTConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, seed=a.seed)
    torch.manual_seed(a.seed if a.init_seed is None else a.init_seed)
    net = guide_model.Guide(guide_model.GuideConfig(vocab_size=tok.n_vocab, n_layer=a.n_layer, n_embd=a.n_embd,
                                                    n_head=a.n_head, n_kv_head=a.n_kv_head, max_seq_len=1024))
    sft.scale_initial_weights(net, a.init_scale)
    if a.zero_proj:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith(guide_model.RESIDUAL_PROJECTIONS):
                    p.zero_()
    opts = optimizers(net, a)
    train_net = torch.compile(net, dynamic=True) if a.compile else net
    alone = sum(families.family_of(t).exact_success(t, None) for t in val_tasks) / len(val_tasks)
    print(json.dumps(dict(args=vars(a), oracle=a.data in ("canonical", "handles"), examples=len(examples),
                          tasks=len({t.id for t, _ in pairs}),
                          renamed=sum(run_dir.original_id(t.id) != t.id for t, _ in pairs),
                          params=sum(p.numel() for p in net.parameters()),
                          core_alone_exact_success=round(alone, 4))), flush=True)
    pools = {}
    t0, useful = time.time(), 0
    for step in range(a.steps):
        pool, third = examples, min(2, 3 * step // a.steps)
        if a.curriculum:             # the recipe's curriculum (sft --curriculum)
            if third not in pools:
                pools[third] = sft.curriculum_pool(examples, n_steps, step, a.steps)
            pool = pools[third]
        for opt, base in opts:
            for g in opt.param_groups:
                g["lr"] = base * lr_scale(step, cfg, a.schedule)
        inputs, targets, mask = sft.sft_batch(sft.sft_batch_examples(pool, cfg, step), pad)
        net.train()
        if step < a.lm_only_steps:   # the problem text alone: every position before the strategy is a target
            loss = sft.sft_loss(train_net, inputs, targets, sft.prompt_mask(mask))
        else:
            loss = sft.sft_loss(train_net, inputs, targets, mask, a.prompt_loss_weight)
        for opt, _ in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        for opt, _ in opts:
            opt.step()
        useful += int((inputs != pad).sum())
        over = a.seconds is not None and time.time() - t0 > a.seconds
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps or over:
            elapsed = time.time() - t0
            texts, _ = evaluate.guide_strategies(net, tok, val_tasks, 160, 64)
            exact = [evaluate.is_plan(t, s) for t, s in zip(val_tasks, texts)]
            by_ops = {}
            for t, e in zip(val_tasks, exact):
                by_ops.setdefault(len(t.ops), []).append(e)
            plan_exact, success = evaluate.plan_scores(val_tasks, texts)
            print(json.dumps(dict(step=step + 1, seconds=round(elapsed), loss=round(loss.item(), 4),
                                  plan_exact=round(plan_exact, 4),
                                  plan_exact_by_ops={n: round(sum(v) / len(v), 4) for n, v in sorted(by_ops.items())},
                                  exact_success=round(success, 4), useful_tokens_per_s=round(useful / elapsed))),
                  flush=True)
            if over:
                break


if __name__ == "__main__":
    main()
