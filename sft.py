"""Supervised fine-tuning of the guide on teacher strategies: ExecTune's initialisation (accepted strategies) and the
supervised-GCoP baseline (raw strategies).

1. Examples are (problem prompt, strategy + EOS) token pairs. Batches are drawn as a function of (seed, step), in
   groups of similar lengths (a third less padding), so a resumed run sees exactly the batches it would have seen.
2. The loss is the mean cross-entropy over strategy tokens (EOS included, padding out), plus prompt_loss_weight
   (0.5) times the mean cross-entropy over the problem text before them. Departure from plain SFT: that language-
   modelling term on unlabeled problem text teaches a small guide trained from scratch to find and copy the
   problem's phrases, which a plan that names quantities needs; it costs nothing, since the forward pass computes
   those logits anyway. A pretrained guide (`--init hf:<dir>`) trains on strategies alone (train.sh sets 0).
3. AdamW, linear warmup then cosine decay, gradient clipping, torch.compile of the training forward and backward. A
   fresh guide starts from its seed's draw of weights at half scale (init_scale): at the model's own scale some
   seeds learned to read multi-step problems thousands of steps late.
4. Every eval_every steps the core's accuracy on val with the guide's greedy strategies picks the checkpoint kept
   (training.Validation); the val loss on canonical strategies and the exact-plan share are oracle curves.
"""
import math
import os
import random
import sys
import time
from dataclasses import dataclass, asdict, replace
from typing import ClassVar

import torch
from tqdm import tqdm

import config
import evaluate
import execute
import families
import model as guide_model
import run_dir
import strategy_format
import training
from config import at_least


@dataclass
class SFTConfig:
    stage: ClassVar[str] = "sft"
    steps: int = 8000                 # with the echoing teacher reading takes longer; on K = 32 teacher draws
                                      # the guide reads 89% of val plans at 8,000 steps (docs/experiments.md,
                                      # this world's levers)
    batch_size: int = 16
    lr: float = 1.5e-3                # 3e-3 left about half the seeds reading late (docs/experiments.md, the
                                      # reading levers)
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    prompt_loss_weight: float = 0.5   # weight of the language-modelling loss on the problem text: predicting the
                                      # problem's own phrases teaches the guide to find and copy them, which is
                                      # what a plan needs (docs/experiments.md, the reading levers: 2x fewer steps
                                      # to a plan)
    compile: bool = True              # torch.compile the training forward/backward (1.2x on a 2-core CPU)
    curriculum: bool = False          # the strategies of fewest steps first (curriculum_pool); off: it lifts the
                                      # slow seed 1 but slows seeds 0 and 3 (docs/experiments.md, reading levers)
    decline_targets: bool = False     # with --data accepted: also teach the decline (strategy_format.DECLINE) on
                                      # training tasks with no accepted strategy that the core alone solves by
                                      # majority (baselines); mathsim's default run has none such (docs/experiments.md)
    seed: int = 0
    init_scale: float = 0.5           # a fresh guide's initial weight matrices times this (the same draw, scaled):
                                      # at 1.0 one seed in four read late (62.5%); at 0.5 all four pass 70%
                                      # (docs/experiments.md, the reading levers)
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 2
    max_seq_len: int = 1024

    def __post_init__(self):
        at_least(self, 1, "steps", "batch_size", "eval_every", "n_layer", "n_embd", "n_head", "n_kv_head",
                 "max_seq_len")
        at_least(self, 0, "warmup", "weight_decay", "grad_clip", "prompt_loss_weight", "seed")
        if not self.init_scale > 0:
            raise ValueError(f"--init-scale must be > 0, got {self.init_scale}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"need --lr > 0 and 0 <= --min-lr-ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        try:                                    # the guide's own shape rules
            guide_model.GuideConfig(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                                    n_kv_head=self.n_kv_head, max_seq_len=self.max_seq_len)
        except ValueError as e:
            raise ValueError(f"--n-embd / --n-head / --n-kv-head: {e}") from None


def scale_initial_weights(guide, scale):
    """Multiply a fresh guide's weight matrices (the tied embedding once) by scale: smaller initial logits and
    residual updates, so that an unlucky draw of the weights does not hold the guide back for thousands of steps."""
    with torch.no_grad():
        for p in guide.parameters():
            if p.dim() == 2:
                p.mul_(scale)


def sft_examples(run, tok, data, split_tasks, max_len):
    """(prompt tokens, strategy tokens + EOS) pairs, strategies from accepted.jsonl or raw.jsonl, and beside them
    the number of steps of each strategy (the curriculum's measure of difficulty; 0 for an invalid one)."""
    path = run.file(f"{data}.jsonl")
    rows = run_dir.read_jsonl(path, required=("task_id", "strategy"))
    by_id = {t.id: t for t in split_tasks}
    # the copies of these tasks with new numbers (sample --renamings), where accepted strategies were carried over
    by_id.update({t.id: t for t in run_dir.load_renamed_tasks(run, by_id)})
    eos = tok.encode_single_token("<|eos|>")
    examples, n_steps, dropped = [], [], 0
    for r in rows:
        t = by_id.get(r["task_id"])
        if t is None:
            continue
        prompt = families.prompt_tokens(tok, t)
        completion = tok.encode(r["strategy"], disallowed_special=()) + [eos]
        if len(prompt) + len(completion) > max_len:
            dropped += 1
            continue
        examples.append((prompt, completion))
        n_steps.append(len(families.family_of(t).parse_strategy(r["strategy"]).steps))
    if dropped:
        print(f"sft: {dropped} examples longer than {max_len} tokens dropped", file=sys.stderr)
    return examples, n_steps


def curriculum_pool(examples, n_steps, step, total_steps):
    """The examples SFT step `step` draws from under the curriculum: in the first third of the steps those whose
    strategy has at most the 1/3-quantile's number of steps, in the second third at most the 2/3-quantile's, then
    all. At level 1 that is 1-step plans, then plans of at most 2 steps, then all. The measure is the teacher
    strategy's own step count, which the guide's data holds (for accepted level-1 strategies it equals the task's
    number of operations in every case)."""
    third = min(2, 3 * step // total_steps)
    if third == 2:
        return examples
    ordered = sorted(n_steps)
    most = ordered[max(0, -(-(third + 1) * len(ordered) // 3) - 1)]
    return [e for e, n in zip(examples, n_steps) if n <= most]


def sft_batch(examples, pad_id):
    """Pad (prompt + completion) pairs into inputs / targets; the loss mask covers completion tokens only."""
    T = max(len(p) + len(c) for p, c in examples) - 1
    inputs = torch.full((len(examples), T), pad_id, dtype=torch.long)      # (B, T)
    targets = torch.full((len(examples), T), pad_id, dtype=torch.long)     # (B, T)
    loss_mask = torch.zeros((len(examples), T), dtype=torch.bool)          # (B, T)
    for i, (p, c) in enumerate(examples):
        seq = torch.tensor(p + c)
        n = len(seq) - 1
        inputs[i, :n], targets[i, :n] = seq[:-1], seq[1:]
        loss_mask[i, len(p) - 1:n] = True        # targets from the first strategy token through EOS
    return inputs, targets, loss_mask


def sft_batch_examples(examples, cfg, step, group=8):
    """The examples of SFT step `step`: a function of (seed, step), so a resumed run sees exactly the batches it would
    have seen. Every `group` steps draw group * batch_size examples at random and cut them, sorted by length, into
    `group` batches: a batch of similar lengths wastes little compute on padding (about a third less here)."""
    group = max(1, min(group, len(examples) // cfg.batch_size))
    rng = random.Random(cfg.seed * 1_000_003 + step // group)
    pool = sorted(rng.sample(examples, min(group * cfg.batch_size, len(examples))), key=lambda e: len(e[0]) + len(e[1]))
    batches = [pool[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(group)]
    rng.shuffle(batches)
    return batches[step % group]


def prompt_mask(loss_mask):
    """(B, T) the positions before the strategy: those whose targets are problem text (sft_batch's loss_mask marks
    the strategy's)."""
    return loss_mask.cumsum(1) == 0


def sft_loss(model, inputs, targets, loss_mask, prompt_weight=0.0, counts=None):
    """Mean cross-entropy over strategy tokens (padding carries no loss), plus prompt_weight times the mean
    cross-entropy over the problem text before them: language modelling on unlabeled problem text, which the
    forward pass computes anyway. counts: (strategy tokens, problem-text tokens) to divide by, when this batch is
    one process's share of a larger one (token_counts of the whole step's batch); default: this batch's own."""
    with guide_model.autocast(inputs.device):
        logits = model(inputs)                                              # (B, T, V)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                         reduction="none").view_as(targets)  # (B, T)
    on_prompt = prompt_mask(loss_mask)                                      # (B, T)
    n_strategy, n_prompt = counts or (loss_mask.sum(), on_prompt.sum())
    loss = (ce * loss_mask).sum() / n_strategy
    if prompt_weight:
        loss = loss + prompt_weight * (ce * on_prompt).sum() / n_prompt
    return loss


def token_counts(examples):
    """(strategy tokens, problem-text tokens) that sft_loss averages over for these (prompt, completion) pairs:
    every completion token is a target, and every prompt position but the last predicts a problem token."""
    return sum(len(c) for _, c in examples), sum(len(p) - 1 for p, _ in examples)


@torch.no_grad()
def sft_val_loss(model, examples, pad_id, batch_size):
    device = model.tok_emb.weight.device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        inputs, targets, loss_mask = (x.to(device) for x in sft_batch(examples[i:i + batch_size], pad_id))
        n = loss_mask.sum().item()
        total += sft_loss(model, inputs, targets, loss_mask).item() * n
        count += n
    model.train()
    return total / max(1, count)


def lr_at(step, cfg, base_lr):
    """Linear warmup, then cosine decay to min_lr_ratio * base_lr."""
    if step < cfg.warmup:
        return base_lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# a fresh guide's shape and initial scale: a pretrained guide (--init hf:<dir>) brings its own
FRESH_GUIDE_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_head", "init_scale")


def check_init(args, run, cfg):
    """A pretrained guide's context must hold the longest example (the flags it ignores: exectune.inert_flag)."""
    if not args.init:
        return
    max_len = run_dir.guide_config(run, args.init).max_seq_len
    if cfg.max_seq_len > max_len:
        raise run_dir.UserError(f"sft: --max-seq-len {cfg.max_seq_len} is longer than the guide's context ({max_len})")


def recorded_config(cfg, init):
    """What the run records for this SFT stage: cfg, or for a pretrained guide cfg without the fresh guide's fields
    (which it ignores) and with the guide it starts from."""
    if not init:
        return asdict(cfg)
    return {k: v for k, v in asdict(cfg).items() if k not in FRESH_GUIDE_FIELDS} | dict(init=init)


def sft_data(run, tok, data, cfg):
    """(training examples, their strategies' step counts, validation examples, val tasks for the core's accuracy).
    An offline world validates on canonical strategies of val tasks, an oracle that costs no teacher call and
    measures what matters (can the guide write a clear plan for an unseen problem); a real benchmark has none, so
    the strategies of every 20th training task are held out instead, and val tasks are the val split's either way."""
    train_tasks, val_tasks = run_dir.load_tasks(run, "train"), run_dir.load_tasks(run, "val")
    canonical = train_tasks and families.family_of(train_tasks[0]).canonical_strategy
    if canonical:
        taught = train_tasks
        train, n_steps = sft_examples(run, tok, data, train_tasks, cfg.max_seq_len)
        eos = tok.encode_single_token("<|eos|>")
        val = [(p, c) for p, c in ((families.prompt_tokens(tok, t),
                                     tok.encode(canonical(t), disallowed_special=()) + [eos])
                                    for t in val_tasks) if len(p) + len(c) <= cfg.max_seq_len]
    else:
        taught = [t for i, t in enumerate(train_tasks) if i % 20]
        train, n_steps = sft_examples(run, tok, data, taught, cfg.max_seq_len)
        val = sft_examples(run, tok, data, train_tasks[::20], cfg.max_seq_len)[0]
    if not train:
        raise run_dir.UserError(f"{run.file(data + '.jsonl')} holds no usable strategies")
    if cfg.decline_targets:
        declines = decline_examples(run, tok, taught, cfg.max_seq_len)
        print(f"sft: {len(declines)} training tasks taught to decline (no accepted strategy; the core alone solves "
              f"them by majority)", file=sys.stderr)
        train, n_steps = train + declines, n_steps + [0] * len(declines)
    return train, n_steps, val, val_tasks


def decline_examples(run, tok, train_tasks, max_len):
    """(prompt, DECLINE + EOS) for each training task where the core alone is right more often than the task's
    accepted strategies: none was accepted (so none was right in all M runs) and the core alone was right in most of
    its baselines runs. Both facts are executions on the core, no oracle."""
    has_accepted = {r["task_id"] for r in run_dir.read_jsonl(run.file("accepted.jsonl"), required=("task_id",))}
    if not os.path.exists(run_dir.alone_stats_path(run)):
        raise run_dir.UserError("sft: --decline-targets needs the baselines stage's core-alone runs; run it first")
    alone = run_dir.load_alone_stats(run)
    completion = tok.encode(strategy_format.DECLINE, disallowed_special=()) + [tok.encode_single_token("<|eos|>")]
    prompts = (families.prompt_tokens(tok, t) for t in train_tasks
               if t.id not in has_accepted and alone.get(t.id, {}).get("majority_correct"))
    return [(p, completion) for p in prompts if len(p) + len(completion) <= max_len]


def sft_step(trained, guide, optimizer, batch, cfg, step, pad, device):
    """One optimizer step on the step's whole batch (this process takes its share under torchrun) through `trained`
    (the guide, or the guide wrapped for torchrun and compiled); returns (the whole batch's loss, the gradient norm,
    the tokens this process saw)."""
    rank, world = training.rank_and_world()
    for g in optimizer.param_groups:
        g["lr"] = lr_at(step, cfg, cfg.lr)
    inputs, targets, loss_mask = (x.to(device) for x in sft_batch(batch[rank::world], pad))
    loss = sft_loss(trained, inputs, targets, loss_mask, cfg.prompt_loss_weight, token_counts(batch))
    optimizer.zero_grad(set_to_none=True)
    (loss * world).backward()        # DistributedDataParallel averages over processes; the loss is already a share
    grad_norm = torch.nn.utils.clip_grad_norm_(guide.parameters(), cfg.grad_clip).item()
    optimizer.step()
    return training.sum_over_processes(loss.item(), device), grad_norm, inputs.numel()


def sft_config(args):
    """The stage's configuration (config.stage_config). A preset's decline targets apply to accepted data alone: raw
    strategies (supervised GCoP) are taught as drawn, and the run records so."""
    cfg = config.stage_config(SFTConfig, args)
    return cfg if args.data == "accepted" else replace(cfg, decline_targets=False)


def stage_sft(args, run):
    """SFT of a fresh guide (or of a pretrained one, --init hf:<dir>) on accepted or raw strategies, keeping the
    checkpoint with which the core is most accurate on val (the module docstring)."""
    cfg = sft_config(args)
    name = f"sft-{args.data}"
    tok = run_dir.load_guide_tokenizer(run, args.init)
    check_init(args, run, cfg)
    run.check_config(name, recorded_config(cfg, args.init), outputs=run.file(name), defaults=SFTConfig())
    train, n_steps, val, val_tasks = sft_data(run, tok, args.data, cfg)
    client = execute.client_for(execute.Endpoints.from_args(args), "core", run)
    validate = training.Validation(run, name, run.file(name), client, val_tasks, tok,
                                   evaluate.strategy_budget(args, run))   # decodes as evaluation will
    rank, world = training.rank_and_world()
    if cfg.batch_size % world:
        raise run_dir.UserError(f"sft: --batch-size {cfg.batch_size} does not split over {world} processes")
    training.seed_everything(cfg.seed)          # the fresh guide's weights, and every RNG state a checkpoint saves

    def fresh():
        state = dict(step=0, best_step=None, best_accuracy=None, config=recorded_config(cfg, args.init))
        if args.init:                           # a pretrained guide (hf:<dir>)
            return run_dir.load_guide(run, args.init, args.device)[0], state
        guide = guide_model.Guide(guide_model.GuideConfig(
            vocab_size=tok.n_vocab, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
            n_kv_head=cfg.n_kv_head, max_seq_len=cfg.max_seq_len)).to(args.device)
        scale_initial_weights(guide, cfg.init_scale)
        return guide, state
    resumed = training.resume_or_start(name, validate.out_dir, cfg.steps, args.device, fresh)
    if resumed is None:
        return
    guide, optimizer_state, state = resumed
    guide.grad_checkpointing = args.grad_checkpointing
    optimizer = training.make_optimizer(guide, cfg.lr, cfg.weight_decay, optimizer_state)
    # the guide itself, or wrapped for torchrun and compiled: it shares the guide's parameters, so checkpoints,
    # validation and generation use the guide
    trained = training.data_parallel(guide)
    trained = torch.compile(trained, dynamic=True) if cfg.compile else trained
    if rank == 0:
        print(f"sft: {len(train)} {args.data} examples, {len(val)} val, guide "
              f"{sum(p.numel() for p in guide.parameters()) / 1e6:.2f}M params"
              + (f", {world} processes" if world > 1 else ""))
    pad = tok.encode_single_token("<|pad|>")
    guide.train()
    t0, tokens, pools = time.time(), 0, {}
    bar = tqdm(range(state["step"], cfg.steps), desc=name, initial=state["step"], total=cfg.steps, disable=rank != 0)
    for step in bar:
        pool = train
        if cfg.curriculum:
            third = min(2, 3 * step // cfg.steps)
            if third not in pools:
                pools[third] = curriculum_pool(train, n_steps, step, cfg.steps)
            pool = pools[third]
        loss, grad_norm, seen = sft_step(trained, guide, optimizer, sft_batch_examples(pool, cfg, step), cfg, step,
                                         pad, args.device)
        tokens += seen
        bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            tokens_per_s = training.sum_over_processes(tokens, args.device) / (time.time() - t0)
            if rank != 0:                        # one process validates, saves and logs for the run
                continue
            val_loss = sft_val_loss(guide, val, pad, 64)
            accuracy, plan_exact, exact_success = validate(
                guide, optimizer, state, step + 1, loss=round(loss, 4), val_loss=round(val_loss, 4),
                lr=optimizer.param_groups[0]["lr"], grad_norm=round(grad_norm, 3), tokens_per_s=round(tokens_per_s),
                **training.peak_memory(args.device))
            guide.train()
            bar.write(f"{name} step {step + 1}: train loss {loss:.3f}, val loss {val_loss:.3f}, "
                      f"val accuracy {accuracy:.3f} (best {state['best_accuracy']:.3f}), exact plans "
                      f"{evaluate.fmt(plan_exact, '{:.1%}')}, mean exact success {evaluate.fmt(exact_success)}")
