"""Structure-aware GRPO for the guide: the reward (docs/world.md §8) and the update.

One training step (grpo_step):
1. Rollouts: G strategies per prompt, the step's prompts prefilled once each and decoded as one batch
   (generate.generate_groups), with the log-probs of the sampled tokens at the sampling temperature ("old" log-probs).
2. Rewards: every strategy goes to the live core once, the whole step in one batch (compute_rewards).
   The reward is the sum of its weighted parts (Reward.parts: validity, execution, leakage, harm, cost), each
   also logged apart; the weights are RewardWeights, set with `--weights` and recorded with the stage.
   A core call that fails for good gives no reward (NaN), never 0, and is counted.
3. Advantages per group of G: A = (r - mean) / (std + 1e-4), the mean over the group's non-NaN rewards and the
   std over every non-NaN reward of the step (every process's under torchrun) about its own group's mean, not the
   group's own std: the textbook's per-group std blows a group whose samples differ only in the small, continuous
   cost term (all correct, say) up to the size of a right-against-wrong group. Measured about the group means, the
   step's std is unchanged by a per-task constant, which still cancels (below). `--std-scale group` is the textbook;
   `--std-scale none` drops the division (A = r - mean, as in Dr. GRPO, Liu et al. 2025). A NaN reward gets A = 0
   and is left out of the mean and std. A group whose non-NaN rewards are all equal (or that has fewer than two)
   gets A = 0 everywhere: it has nothing to teach.
4. Per completion token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = exp(new - old), eps = 0.2,
   plus beta * k3 KL to a frozen reference, kl = exp(ref - new) - (ref - new) - 1; beta = 0 by default.
5. The loss is the sum over every completion token of the step (EOS in; prompt and padding out) divided by the
   step's total completion-token count, so any micro-batch split gives the same gradient. Each update pass is one
   optimizer step with gradient clipping.

A per-task constant added to every reward of a group (say "improvement over the core alone") cancels in the
group-normalized advantage; only terms that differ between a task's samples, such as harm, change the gradient.

The stage (stage_grpo, `exectune.py grpo`) starts from an SFT checkpoint, walks the training tasks in a fixed seeded
order, and keeps the checkpoint with which the core is most accurate on val (training.Validation), the
starting one included, so RL that does not help leaves the guide as it was. `--reward outcome` trains the
advisor-style baseline with the same loop; `--reward structure-defer` (a lever, not the recipe) prices an invalid
strategy as the deferral it is at inference instead of as an error.
"""
import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, asdict
from typing import ClassVar

import torch
from tqdm import tqdm

import config
import evaluate
import execute
import families
import generate
import run_dir
import strategy_format
import training
from config import at_least


# ----------------------------------------------------------------------------------------------- reward


@dataclass
class RewardWeights:
    """The reward's weights, one field per term (docs/world.md §8); `exectune.py grpo --weights KEY=VALUE,...` sets
    them and the run records them with the stage's configuration. To add a term: a field here, and one line in
    compute_rewards that puts `weight * value` into `Reward.parts` (README, adding a reward)."""
    invalid: float = -1.0      # validity: the strategy does not parse (the core is then not called)
    execution: float = 1.0     # the core's answer is correct
    leakage: float = -0.5      # the strategy states the answer
    harm: float = -0.5         # the core alone usually solves this task but fails with the strategy
    cost_lambda: float = 0.1   # cost = -cost_lambda * (core dollars with the strategy / core dollars alone)
    decline: float = 1.0       # a decline (the core alone is asked) earns decline * the core alone's success rate on
                               # the task, its expected outcome, instead of a run of the core

    @classmethod
    def parse(cls, text):
        """'harm=-1.0,cost_lambda=0.2' -> RewardWeights with those fields set and the others at their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise ValueError(f"{item!r} is not KEY=VALUE with KEY one of {', '.join(names)}")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"{key}={value.strip()!r} is not a number") from None
            if not math.isfinite(values[key]):
                raise ValueError(f"{key} must be finite, got {value.strip()}")
        return cls(**values)

    def __str__(self):      # the form --weights takes, for --help
        return ",".join(f"{k}={v:g}" for k, v in dataclasses.asdict(self).items())


@dataclass
class Reward:
    """One strategy's reward: `parts` holds its weighted terms by name, and `total` is their sum, whatever they are
    (NaN if the core failed), so a term is optimised as soon as compute_rewards puts it in `parts`."""
    parts: dict = dataclasses.field(default_factory=dict)   # name -> weighted value
    valid: bool = False
    correct: bool = False
    leaked: bool = False
    harmed: bool = False
    deferred: bool = False              # invalid, or abandoned at an unclear step (strategy_format.deferred)
    declined: bool = False              # the guide declined (strategy_format.declines): the core alone is asked
    core_dollars: float | None = None   # None: not run, failed, or the core's price is unknown
    failed: bool = False

    @property
    def total(self):
        return math.nan if self.failed else sum(self.parts.values())


REWARDS = ("structure", "outcome", "structure-defer")


def compute_rewards(task_list, strategies, client, alone_stats=None, weights=None, reward="structure", draw=0):
    """Score strategies[i] for task_list[i] with the core behind `client`; returns one Reward each.

    reward="structure": the ExecTune reward (docs/world.md §8). An invalid strategy scores `weights.invalid` and is
      never sent to the core. A decline is priced at what it buys, the core alone: `weights.decline` times the core
      alone's success rate on the task, and the cost of the core alone (ratio 1), without a call.
      alone_stats[task.id] = {"alone_majority_correct": bool, "alone_rate": float, "alone_dollars": float | None},
      from the core-alone runs of the baselines stage. The cost term is left at 0 when either dollar figure is
      unknown (a core with no known price) or the alone cost is 0.
    reward="outcome": the advisor-style baseline, `weights.execution` when the core's answer is correct, else 0.
      Every strategy goes to the core; the core ignores an invalid one and solves alone (a decline: the same).
    reward="structure-defer": the structure reward with an invalid strategy priced as the deferral it is at inference
      (the core ignores it and solves alone): it goes to the core and scores execution, harm and cost like any
      strategy, with no validity penalty. A lever (docs/experiments.md, GRPO levers), not the recipe's reward.
    Sample i is drawn with seed `draw + i`, so distinct samples of one request are independent draws; the core
    samples with the client's parameters (the evaluation's).
    """
    weights = weights or RewardWeights()
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}: use one of {', '.join(REWARDS)}")
    if len(task_list) != len(strategies):
        raise ValueError(f"{len(task_list)} tasks but {len(strategies)} strategies")
    alone_stats = alone_stats or {}
    structured = reward != "outcome"        # leakage, harm and cost count (the structure rewards)
    runs_invalid = reward != "structure"    # an invalid strategy goes to the core, which solves alone
    if structured:
        missing = [t.id for t in task_list if t.id not in alone_stats]
        if missing:
            raise ValueError(f"no core-alone stats for task {missing[0]!r} (and {len(missing) - 1} more); "
                             "run the baselines stage first")

    family = [families.family_of(t) for t in task_list]
    valid = [f.parse_strategy(s).valid for f, s in zip(family, strategies)]
    declined = [strategy_format.declines(s) for s in strategies]
    priced = [declined[i] and structured for i in range(len(strategies))]    # a decline scored without a call
    to_run = [i for i in range(len(strategies)) if not priced[i] and (valid[i] or runs_invalid or declined[i])]
    replies, verdicts = execute.run_strategies(client, [task_list[i] for i in to_run], [strategies[i] for i in to_run],
                                        "reward", draws=[draw + i for i in to_run], strict=False)
    reply_of = dict(zip(to_run, replies))
    correct = dict(zip(to_run, verdicts))

    rewards = []
    for i, (task, strategy) in enumerate(zip(task_list, strategies)):
        alone = alone_stats.get(task.id, {})
        r = Reward(valid=valid[i], leaked=family[i].leaks(strategy, task), declined=declined[i])
        reply = reply_of.get(i)
        text = reply.text if reply is not None and not isinstance(reply, Exception) else None
        r.deferred = not declined[i] and strategy_format.deferred(valid[i], text)
        if priced[i] and alone.get("alone_rate") is None:   # no core-alone run returned: no price, as a failure
            r.failed = True
        elif priced[i]:                         # a decline, structure rewards: the core alone's expected outcome
            r.parts["decline"] = weights.decline * alone["alone_rate"]
            r.parts["cost"] = -weights.cost_lambda if alone.get("alone_dollars") else 0.0
        elif reply is None:                     # invalid, structure reward: scored without the core
            r.parts["validity"] = weights.invalid
        elif isinstance(reply, Exception):      # chat_many puts a CoreError where a call failed for good
            r.failed = True
        else:
            r.correct = correct[i]
            r.harmed = bool(alone.get("alone_majority_correct")) and not r.correct
            r.core_dollars = client.dollars(reply)  # a cache hit is priced too: the reward prices the strategy
            r.parts["execution"] = weights.execution * r.correct
            if structured:
                r.parts["leakage"] = weights.leakage * r.leaked
                r.parts["harm"] = weights.harm * r.harmed
                alone_dollars = alone.get("alone_dollars")
                known = r.core_dollars is not None and alone_dollars
                r.parts["cost"] = -weights.cost_lambda * r.core_dollars / alone_dollars if known else 0.0
        rewards.append(r)
    return rewards


# ----------------------------------------------------------------------------------------------- update


STD_SCALES = ("step", "group", "none")


def group_advantages(rewards, std_scale="step"):
    """(N, G) rewards, NaN where the core failed -> (N, G) advantages (see the module docstring, step 3)."""
    if std_scale not in STD_SCALES:
        raise ValueError(f"unknown std scale {std_scale!r}: use one of {', '.join(STD_SCALES)}")
    ok = ~torch.isnan(rewards)                                              # (N, G)
    n = ok.sum(dim=1, keepdim=True).clamp(min=1)                           # (N, 1)
    mean = torch.where(ok, rewards, 0.0).sum(dim=1, keepdim=True) / n      # (N, 1)
    dev = torch.where(ok, rewards - mean, 0.0)                              # (N, G)
    if std_scale == "group":
        dev = dev / ((dev.pow(2).sum(dim=1, keepdim=True) / n).sqrt() + 1e-4)   # population std of the group
    elif std_scale == "step":        # the step's rewards about their group means, over every process under torchrun
        count, squares = (training.sum_over_processes(float(x), rewards.device) for x in (ok.sum(), dev.pow(2).sum()))
        dev = dev / (math.sqrt(squares / max(count, 1)) + 1e-4)
    hi = torch.where(ok, rewards, -math.inf).amax(dim=1, keepdim=True)
    lo = torch.where(ok, rewards, math.inf).amin(dim=1, keepdim=True)
    informative = ok & (hi > lo)     # exact test, so equal rewards give exactly 0 whatever the rounding of the mean
    return torch.where(informative, dev, 0.0)


def grpo_loss(new_logprobs, old_logprobs, advantages, mask, n_tokens, ref_logprobs=None, clip_eps=0.2, kl_beta=0.0):
    """Clipped surrogate (+ optional k3 KL) summed over the masked tokens and divided by n_tokens.

    new/old/ref_logprobs, mask: (B, T); advantages: (B,); n_tokens: completion tokens in the whole step.
    Returns (loss, stats); stats are means over this call's masked tokens: clip_frac (share of tokens whose
    clipped branch is taken, i.e. whose gradient is cut), ratio, kl (None without a reference), and tokens.
    """
    mask = mask.bool()
    # Padding may hold anything (even -inf); zero it first so no inf or NaN reaches the loss or its gradient.
    new = torch.where(mask, new_logprobs, 0.0)
    old = torch.where(mask, old_logprobs, 0.0)
    adv = advantages[:, None].to(new.dtype)                                  # (B, 1)
    ratio = torch.exp(new - old)                                             # (B, T)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = None
    if ref_logprobs is not None:
        d = torch.where(mask, ref_logprobs, 0.0) - new                      # (B, T)
        kl = torch.exp(d) - d - 1
        per_token = per_token + kl_beta * kl
    loss = torch.where(mask, per_token, 0.0).sum() / n_tokens

    with torch.no_grad():
        m = mask.float()
        count = m.sum().clamp(min=1)
        clipped = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        stats = {"tokens": int(m.sum()),
                 "clip_frac": float((clipped * m).sum() / count),
                 "ratio": float((ratio * m).sum() / count),
                 "kl": None if kl is None else float((kl * m).sum() / count)}
    return loss, stats


@dataclass
class GRPOConfig:
    stage: ClassVar[str] = "grpo"
    reward: str = dataclasses.field(default="structure", metadata=dict(choices=REWARDS))   # module docstring
    weights: RewardWeights = dataclasses.field(default_factory=RewardWeights,
                                               metadata=dict(parse=RewardWeights.parse))
    prompts_per_step: int = 8      # N tasks per step
    group_size: int = 8            # G samples per task
    temperature: float = 1.0       # sampling and scoring temperature
    lr: float = 1e-4               # a fresh Adam's first steps move every weight by ~lr
    clip_eps: float = 0.2
    kl_beta: float = 0.0
    update_passes: int = 1
    std_scale: str = "step"        # advantages divided by the std of the step's rewards (module docstring, step 3)
    micro_batch_size: int = 16
    grad_clip: float = 1.0
    steps: int = 200               # the pilot of the echo world still gained at step 100 (docs/experiments.md)
    eval_every: int = 20           # greedy accuracy on val every this many steps; the best checkpoint is kept
    n_val_eval: int = 200
    seed: int = 0

    def __post_init__(self):
        at_least(self, 1, "prompts_per_step", "update_passes", "micro_batch_size", "steps",
                 "eval_every", "n_val_eval")
        at_least(self, 2, "group_size")          # a group of one has no advantage to learn from
        at_least(self, 0, "clip_eps", "kl_beta", "grad_clip", "seed")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"need --lr > 0 and --temperature > 0, got {self.lr} and {self.temperature}")
        if self.std_scale not in STD_SCALES:
            raise ValueError(f"--std-scale must be one of {', '.join(STD_SCALES)}, got {self.std_scale!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"--reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")


def _mean(values):
    return sum(values) / len(values) if values else None


def accumulate_gradients(trained, prompts, tokens, old_logprobs, mask, advantages, cfg, ref_model=None, n_vocab=None):
    """Backpropagate the step's loss through `trained` into the guide's .grad, cfg.micro_batch_size rows at a time.

    prompts: B token lists; tokens, old_logprobs, mask: (B, T); advantages: (B,); ref_model: frozen or None;
    n_vocab: the tokenizer's size (generate samples among its tokens only).
    Every micro-batch divides by the step's total token count (over every process under torchrun), so the gradient
    does not depend on the split. trained may be DistributedDataParallel: it averages the processes' gradients in the
    last micro-batch's backward, so each process's loss is scaled by their number. Returns the loss stats of each
    micro-batch.
    """
    world = training.rank_and_world()[1]
    n_tokens = max(int(training.sum_over_processes(int(mask.sum()), mask.device)), 1)
    lengths = mask.sum(dim=1)                                    # (B,)
    all_stats = []
    starts = range(0, len(prompts), cfg.micro_batch_size)
    for s in starts:
        sl = slice(s, s + cfg.micro_batch_size)
        width = max(int(lengths[sl].max()), 1)                   # drop this micro-batch's all-padding columns
        last = s == starts[-1]
        # DistributedDataParallel decides in the forward pass whether the backward all-reduces: both go inside
        # no_sync, so only the last micro-batch syncs
        with contextlib.nullcontext() if last or world == 1 else trained.no_sync():
            new = generate.completion_logprobs(trained, prompts[sl], tokens[sl, :width], cfg.temperature, n_vocab)
            ref = None
            if ref_model is not None:
                with torch.no_grad():
                    ref = generate.completion_logprobs(ref_model, prompts[sl], tokens[sl, :width], cfg.temperature,
                                                       n_vocab)
            loss, stats = grpo_loss(new, old_logprobs[sl, :width], advantages[sl], mask[sl, :width], n_tokens,
                                    ref, cfg.clip_eps, cfg.kl_beta)
            (loss * world).backward()
        all_stats.append(stats)
    return all_stats


def rollout_generators(device, seed, step, first, n):
    """One generator per task of the step, seeded from (seed, step, the task's index in the step), so a resumed
    step samples the same and the split over torchrun processes changes nothing."""
    return [torch.Generator(device).manual_seed((seed * 100_003 + step) * 10_007 + j) for j in range(first, first + n)]


def first_draw(step, first, n_tasks, group_size):
    """The core-call draw of this process's first sample at `step`: draws run step * B + ... (B: the step's samples
    over every process), so every request of every step is a fresh sample and a resumed step asks the same again."""
    world = training.rank_and_world()[1]
    return (step * world * n_tasks + first) * group_size


def grpo_step(trained, optimizer, tokenizer, tasks, client, alone_stats, cfg, max_new_tokens, step, ref_model=None):
    """One GRPO step on `tasks` (the module docstring's steps 1-5); returns the step's metrics as one flat dict.

    trained: the guide, or the guide in DistributedDataParallel under torchrun, where `tasks` is this process's block
    of the step's tasks and the metrics cover every process's. max_new_tokens: the run's strategy budget
    (evaluate.strategy_budget). ref_model: the frozen reference of the KL term (cfg.kl_beta > 0), else None.
    """
    guide = getattr(trained, "module", trained)           # DistributedDataParallel's module, for the rollouts
    first = training.rank_and_world()[0] * len(tasks)  # the step's index of this process's first task
    G, clock = cfg.group_size, [time.perf_counter()]

    # 1. Rollouts: G samples per task from one prefill, every task of the step in one batch.
    guide.eval()
    task_prompts = [families.prompt_tokens(tokenizer, task) for task in tasks]
    sampling = generate.SamplingOptions(max_new_tokens, tokenizer.encode_single_token("<|eos|>"),
                                        temperature=cfg.temperature, stop_strings=[strategy_format.STOP])
    generators = rollout_generators(guide.tok_emb.weight.device, cfg.seed, step, first, len(tasks))
    rollout = generate.generate_groups(guide, task_prompts, G, sampling, generator=generators, tokenizer=tokenizer)
    clock.append(time.perf_counter())

    # 2. Rewards: the strategy as written (stop string included) is what the core sees at inference.
    rewards = compute_rewards([t for t in tasks for _ in range(G)], rollout.texts, client, alone_stats, cfg.weights,
                              cfg.reward, draw=first_draw(step, first, len(tasks), G))
    clock.append(time.perf_counter())

    # 3. Advantages per group.
    totals = torch.tensor([r.total for r in rewards], dtype=torch.float32, device=rollout.tokens.device)
    advantages = group_advantages(totals.view(-1, G), cfg.std_scale).flatten()              # (B,)

    # 4-5. The clipped loss over every completion token, one optimizer step per update pass.
    prompts = [prompt for prompt in task_prompts for _ in range(G)]
    guide.train()
    loss_stats = []
    for _ in range(cfg.update_passes):
        optimizer.zero_grad(set_to_none=True)
        loss_stats += accumulate_gradients(trained, prompts, rollout.tokens, rollout.logprobs, rollout.mask, advantages,
                                           cfg, ref_model, tokenizer.n_vocab)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(guide.parameters(), cfg.grad_clip))
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    guide.eval()
    clock.append(time.perf_counter())
    return step_metrics(step, rollout, rewards, advantages.view(-1, G), loss_stats, grad_norm, client, clock,
                        sampling.eos_id)


def step_metrics(step, rollout, rewards, advantages, loss_stats, grad_norm, client, clock, eos_id):
    """The step's log line, over every process's samples under torchrun: the reward and each of its parts, rates,
    lengths, the loss statistics (token-weighted over every micro-batch and pass) and the time of each phase."""
    lengths = rollout.mask.sum(dim=1).tolist()
    # truncated: ran to the budget without reaching EOS or the stop string
    ended = [strategy_format.STOP in text or (n > 0 and int(row[n - 1]) == eos_id)
             for text, row, n in zip(rollout.texts, rollout.tokens, lengths)]
    zero_std = (advantages == 0).all(dim=1).tolist()
    rewards, lengths, ended, zero_std, loss_stats = (training.gather(x) for x in (
        rewards, lengths, ended, zero_std, loss_stats))

    def token_mean(key):
        pairs = [(s[key], s["tokens"]) for s in loss_stats if s[key] is not None]
        return sum(v * n for v, n in pairs) / max(sum(n for _, n in pairs), 1) if pairs else None

    done = [r for r in rewards if not r.failed]   # samples that have a reward
    parts = dict.fromkeys(part for r in done for part in r.parts)
    priced = client.price_in is not None and client.price_out is not None
    return {
        "step": step,
        "reward": _mean([r.total for r in done]),
        **{f"reward_{part}": _mean([r.parts.get(part, 0.0) for r in done]) for part in parts},
        "validity_rate": _mean([r.valid for r in rewards]),
        # success: the core answered correctly (an invalid strategy under the structure reward never ran: not correct)
        "success_rate": _mean([r.correct for r in done]),
        "leak_rate": _mean([r.leaked for r in rewards]),
        "deferred_rate": _mean([r.deferred for r in rewards]),
        "declined_rate": _mean([r.declined for r in rewards]),
        "harm_rate": _mean([r.harmed for r in done]),
        "zero_std_groups": _mean(zero_std),
        "completion_tokens": _mean(lengths),
        "truncation_rate": 1 - _mean(ended),
        "kl": token_mean("kl"),
        "clip_frac": token_mean("clip_frac"),
        "ratio": token_mean("ratio"),
        "grad_norm": grad_norm,
        "core_dollars": sum(r.core_dollars or 0.0 for r in done) if priced else None,   # cache hits priced too
        "core_failures": sum(r.failed for r in rewards),
        "samples": len(rewards),
        "seconds_rollout": clock[1] - clock[0],
        "seconds_core": clock[2] - clock[1],
        "seconds_update": clock[3] - clock[2],
    }


# ----------------------------------------------------------------------------------------------- the stage


def stage_grpo(args, run):
    """GRPO from an SFT checkpoint; evaluates greedy accuracy on val every eval_every steps and keeps the best
    (the starting checkpoint included, so RL that does not help leaves the guide as it was)."""
    cfg = config.stage_config(GRPOConfig, args)
    name = f"grpo-{cfg.reward}"
    out_dir = run.file(name)
    # a changed weight or flag stops here with one line, unless out_dir is gone
    run.check_config(name, dict(asdict(cfg), init=args.init), outputs=out_dir)
    budget = evaluate.strategy_budget(args, run)
    tok = run_dir.load_guide_tokenizer(run, args.init)
    train = run_dir.load_tasks(run, "train")
    alone_stats = {i: dict(alone_majority_correct=r["majority_correct"], alone_dollars=r["dollars"],
                           alone_rate=r["correct"] / r["runs"] if r["runs"] else None)
                   for i, r in run_dir.load_alone_stats(run).items()}
    client = execute.client_for(execute.Endpoints.from_args(args), "core", run)
    validate = training.Validation(run, name, out_dir, client, run_dir.load_tasks(run, "val")[:cfg.n_val_eval],
                                   tok, budget)
    rank, world = training.rank_and_world()
    if cfg.prompts_per_step % world:
        raise run_dir.UserError(f"grpo: --prompts-per-step {cfg.prompts_per_step} does not split over {world} "
                                "processes")
    training.seed_everything(cfg.seed)

    def fresh():
        state = dict(step=0, best_step=None, best_accuracy=None, config=asdict(cfg), init=args.init)
        return run_dir.load_guide(run, args.init, args.device)[0], state
    resumed = training.resume_or_start(name, out_dir, cfg.steps, args.device, fresh)
    if resumed is None:
        return
    guide, optimizer_state, state = resumed
    guide.grad_checkpointing = args.grad_checkpointing
    optimizer = training.make_optimizer(guide, cfg.lr, 0.0, optimizer_state)
    trained = training.data_parallel(guide)   # the guide itself, or wrapped for torchrun; shares its parameters
    ref_model = None
    if cfg.kl_beta > 0:
        ref_model = run_dir.load_guide(run, args.init, args.device)[0].eval().requires_grad_(False)
    order = random.Random(cfg.seed).sample(train, len(train))   # a fixed pass order, so a resume sees the same tasks

    if optimizer_state is None and rank == 0:   # a fresh start: the starting guide is step 0, the best so far
        validate(guide, optimizer, state, 0)
    share = cfg.prompts_per_step // world       # this process's block of each step's tasks
    bar = tqdm(range(state["step"], cfg.steps), desc=name, initial=state["step"], total=cfg.steps,
               disable=rank != 0)
    for step in bar:
        start = step * cfg.prompts_per_step % len(order)
        batch = (order + order)[start:start + cfg.prompts_per_step]
        metrics = grpo_step(trained, optimizer, tok, batch[rank * share:(rank + 1) * share], client, alone_stats,
                            cfg, budget, step, ref_model)
        if rank != 0:                           # one process validates, saves and logs for the run
            continue
        run.log(name, **metrics, **training.peak_memory(args.device))
        bar.set_postfix(reward=metrics["reward"], valid=metrics["validity_rate"], success=metrics["success_rate"])
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            accuracy = validate(guide, optimizer, state, step + 1)[0]
            bar.write(f"{name} step {step + 1}: reward {evaluate.fmt(metrics['reward'])}, val accuracy {accuracy:.3f} "
                      f"(best {state['best_accuracy']:.3f})")
