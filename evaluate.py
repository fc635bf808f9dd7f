"""Evaluation and the results table: what `exectune.py eval` measures and what each column of results.md means.

Every system (a guide checkpoint, the teacher, or no guide at all) writes a strategy for each held-out task, the
same core executes it with the same seeds, and each task is graded. One row of results.md is one system:

  accuracy (95% CI)       share of test tasks the core answered correctly, with a Wilson 95% interval. Test is drawn
                          like train (i.i.d.). A task whose teacher or core call failed after retries is left out
                          of every column (counted in `failures` in results.json), never scored as wrong.
  accuracy on held-out    the same on the `ood` split: phrasings (sentence templates, names, scenes) that training
  phrasings               never shows. "—" for a real benchmark (gsm8k), which has no such split.
  declined                share of test tasks the guide declined (strategy_format.DECLINE, written by the guide or
                          by the decline gate, --decline-gate): the core alone was asked. A decline is not a
                          strategy: the next columns count strategies only.
  valid                   share of strategies that parse (docs/world.md §3); "—" for a system without strategies.
  deferred                share of strategies that left the work to the core: invalid, or abandoned by the core
                          at an unclear step (the simulated core says so in its reply; with a real core only
                          invalid strategies are counted).
  success given valid     accuracy over the tasks whose strategy is valid.
  leak                    share of strategies that state the answer.
  harm                    share of tasks the core alone solved (its own run, the "core alone" row) but got wrong with
                          the strategy.
  executability (oracle)  mean comprehension, by the simulated cheap core, of the verbs of the valid test strategies'
                          steps (docs/world.md §4): read from the offline world, for the table only; "—" elsewhere.
  core in / out tok       mean tokens the core read and wrote per task.
  $ / 1k tasks            core dollars plus, for the teacher row, the teacher's, per 1,000 tasks at the models'
                          prices; "n/a" when a price is unknown (never counted as $0).
  guide tok               mean tokens the guide wrote per task (a small local model: not priced).
  cost vs large           $ / 1k tasks divided by that of the large core alone; "n/a" when either is unknown.

The decline gate (`--decline-gate`, ExecTune's row in train.sh): the guide declines a problem it finds more
surprising than every val problem, its mean cross-entropy per problem-text token (`problem_surprise`; the guide
learnt that text as SFT's language-modelling term) above the val maximum. A problem phrased as none it was trained
on is one it cannot be trusted to plan; the check needs only the problem text and the guide, no core and no oracle.
results.json also holds, per system, the share declined on the held-out-phrasing split and on its tasks that show a
held-out phrasing against those that show none (an oracle of the offline worlds, for the table only).

Each task is prompted and graded by its own family's rules (families.py). The functions here are pure (tasks,
texts and replies in; rows and text out) but for the two stages at the end, which read and write the run
directory around them.
"""
import json
import math
import os
from dataclasses import dataclass, asdict
from typing import ClassVar

import torch
from tqdm import tqdm

import checkpoint
import config
import execute
import families
import generate
import run_dir
import strategy_format
from config import at_least
from core_client import CoreError
from sample import SampleConfig


@torch.no_grad()
def guide_strategies(guide, tok, task_list, max_new_tokens, batch_size, desc="guide writes"):
    """Greedy strategies for each task; returns (texts, completion token counts)."""
    guide.eval()
    greedy = generate.SamplingOptions(max_new_tokens, tok.encode_single_token("<|eos|>"), temperature=0.0,
                                      stop_strings=[strategy_format.STOP])
    texts, lengths = [], []
    for i in tqdm(range(0, len(task_list), batch_size), desc=desc, leave=False):
        prompts = [families.prompt_tokens(tok, t) for t in task_list[i:i + batch_size]]
        out = generate.generate(guide, prompts, greedy, tokenizer=tok)
        texts.extend(out.texts)
        lengths.extend(out.mask.sum(1).tolist())
    return texts, lengths


@torch.no_grad()
def problem_surprise(guide, tok, task_list, batch_size):
    """The guide's mean cross-entropy (nats) per token of each task's prompt: how unlike the problems it learnt to
    read this one is. One forward pass per batch; prompts right-padded, padding outside the mean."""
    guide.eval()
    device = next(guide.parameters()).device
    out = []
    for i in range(0, len(task_list), batch_size):
        prompts = [families.prompt_tokens(tok, t) for t in task_list[i:i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=device)          # (B, T)
        real = torch.tensor([[1.0] * (len(p) - 1) + [0.0] * (width - len(p)) for p in prompts], device=device)
        logits = guide(ids[:, :-1]).float()                                                      # (B, T-1, V)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        out.extend(((ce * real).sum(1) / real.sum(1).clamp(min=1)).tolist())
    return out


def decline_gate(guide, tok, val_tasks, task_list, strategies, batch_size):
    """The gate's verdict on each strategy: the guide's own, or DECLINE where the problem surprises the guide more
    than every val problem does. Returns (strategies, surprise per task, the val limit)."""
    limit = max(problem_surprise(guide, tok, val_tasks, batch_size))
    surprise = problem_surprise(guide, tok, task_list, batch_size)
    return [strategy_format.DECLINE if x > limit else s for s, x in zip(strategies, surprise)], surprise, limit


def plan_scores(val_tasks, texts):
    """Strategies for val tasks scored with the tasks' hidden solutions: (share that is the task's plan, mean
    probability that the simulated cheap core then succeeds; for codesim, that it writes the function bug-free).
    Oracle measures for learning curves: they read the offline world and never feed training or checkpoint choice.
    (None, None) for a real task family, which has no such oracle."""
    oracles = [families.family_of(t) for t in val_tasks]
    if not val_tasks or any(f.plan_matches is None for f in oracles):
        return None, None
    strategies = [strategy_format.extract_strategy(s) or s for s in texts]
    n = len(val_tasks)
    plan_exact = sum(is_plan(t, s) for t, s in zip(val_tasks, texts)) / n
    success = sum(f.exact_success(t, s) for f, t, s in zip(oracles, val_tasks, strategies)) / n
    return plan_exact, success


def executability(task_list, texts):
    """The mean comprehension, by the simulated cheap core, of the verbs of every step of the valid strategies among
    `texts` (one per task): an oracle of the offline world, for tables and curves only. None for a family without
    one (codesim, a real benchmark) or when no strategy is valid."""
    oracles = [families.family_of(t).verb_comprehension for t in task_list]
    if not task_list or any(f is None for f in oracles):
        return None
    steps = [c for f, s in zip(oracles, texts) if s is not None
             for c in f(strategy_format.extract_strategy(s) or s) or ()]
    return sum(steps) / len(steps) if steps else None


def is_plan(task, text):
    """Is a guide's text (its <strategy> envelope, or the bare strategy) the task's plan? The family's oracle, for
    curves and analysis only; None for a family without one (a real benchmark)."""
    oracle = families.family_of(task).plan_matches
    return None if oracle is None else oracle(task, strategy_format.extract_strategy(text) or text)


def task_rows(task_list, strategies, replies, correct, client, guide_tokens, teacher_dollars):
    """One row per task: its strategy (None without one), and the core's reply with its verdict (correct[i]); a
    reply that is a CoreError (the call failed for good) makes the row `failed`, with no verdict."""
    rows = []
    for i, (t, s, r, g, td) in enumerate(zip(task_list, strategies, replies, guide_tokens, teacher_dollars)):
        family = families.family_of(t)
        row = dict(id=t.id, split=t.split, strategy=s, guide_tokens=g, teacher_dollars=td)
        if isinstance(r, CoreError):
            row.update(failed=True)
        else:
            row.update(failed=False, correct=correct[i], dollars=client.dollars(r),
                       input_tokens=r.input_tokens, output_tokens=r.output_tokens)
        if s is not None:
            row.update(declined=strategy_format.declines(s))
        if s is not None and not row["declined"]:
            valid = family.parse_strategy(s).valid
            row.update(valid=valid, leaks=family.leaks(s, t),
                       deferred=strategy_format.deferred(valid, None if isinstance(r, CoreError) else r.text))
        rows.append(row)
    return rows


def wilson(k, n, z=1.96):
    """The Wilson score interval of k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(per_task, core_model, guide, alone_rows=None):
    """The table's columns for one system from its graded test rows; `alone_rows` (id -> the core-alone row of the
    same task) gives the harm rate."""
    done = [r for r in per_task if not r["failed"]]
    n = len(done)
    k = sum(r["correct"] for r in done)
    with_strategy = [r for r in done if "valid" in r]           # a decline is no strategy
    valid = [r for r in with_strategy if r["valid"]]
    harm = None
    if alone_rows is not None and guide != "none":
        harm = sum(bool(alone_rows.get(r["id"], {}).get("correct")) and not r["correct"] for r in done) / max(1, n)
    core_dollars, teacher_dollars = (mean_or_unknown([r[key] for r in done], n) for key in ("dollars",
                                                                                             "teacher_dollars"))
    return dict(
        core=core_model, guide=guide, n=n, failures=len(per_task) - n,   # teacher or core, after retries
        accuracy=k / max(1, n), accuracy_ci=wilson(k, n),
        declined_rate=declined_share(done) if guide != "none" else None,
        validity=len(valid) / len(with_strategy) if with_strategy else None,
        # strategies that left the work to the core (invalid, or abandoned at an unclear step): a guide that defers
        # is the core alone in disguise
        deferred_rate=(sum(r.get("deferred", False) for r in with_strategy) / len(with_strategy)
                       if with_strategy else None),
        success_given_valid=sum(r["correct"] for r in valid) / len(valid) if valid else None,
        leak_rate=sum(r["leaks"] for r in with_strategy) / len(with_strategy) if with_strategy else None,
        harm_rate=harm,
        core_input_tokens=sum(r["input_tokens"] for r in done) / max(1, n),
        core_output_tokens=sum(r["output_tokens"] for r in done) / max(1, n),
        core_dollars_per_1k=None if core_dollars is None else 1000 * core_dollars,
        teacher_dollars_per_1k=None if teacher_dollars is None else 1000 * teacher_dollars,
        guide_tokens=sum(r["guide_tokens"] for r in done) / max(1, n),
    )


def declined_share(rows):
    return sum(r.get("declined", False) for r in rows) / len(rows) if rows else None


def mean_or_unknown(values, n):
    """sum / n, or None when any value is unknown (an unpriced model): unknown is never counted as 0."""
    return None if any(v is None for v in values) else sum(values) / max(1, n)


def dollars_per_1k(row):
    """Core plus teacher dollars per 1,000 tasks; None (unknown) when either price is unknown."""
    core, teacher = row["core_dollars_per_1k"], row["teacher_dollars_per_1k"]
    return None if core is None or teacher is None else core + teacher


def fmt(value, spec="{:.3f}", none="—"):
    return none if value is None else spec.format(value)


def table(results):
    """results.md's text: one row per system (see the module docstring), cost relative to the large core alone."""
    large = next((r for r in results if r["spec"]["core_role"] == "large" and r["guide"] == "none"), None)
    large_cost = large and dollars_per_1k(large)
    lines = ["| system | accuracy (95% CI) | accuracy on held-out phrasings | declined | valid | deferred | "
             "success given valid | leak | harm | executability (oracle) | core in tok | core out tok | $ / 1k tasks | "
             "guide tok | cost vs large |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        total = dollars_per_1k(r)
        rel = None if not (total is not None and large_cost) else total / large_cost
        lo, hi = r["accuracy_ci"]
        ood = "—" if r["accuracy_ood"] is None else "{:.3f} ({:.3f}–{:.3f})".format(r["accuracy_ood"],
                                                                                   *r["accuracy_ood_ci"])
        lines.append(f"| {r['name']} | {r['accuracy']:.3f} ({lo:.3f}–{hi:.3f}) | {ood} | "
                     f"{fmt(r.get('declined_rate'))} | {fmt(r['validity'])} | "
                     f"{fmt(r.get('deferred_rate'))} | "
                     f"{fmt(r['success_given_valid'])} | {fmt(r['leak_rate'])} | {fmt(r['harm_rate'])} | "
                     f"{fmt(r.get('executability'))} | "
                     f"{r['core_input_tokens']:.0f} | {r['core_output_tokens']:.0f} | "
                     f"{fmt(total, '{:.3f}', 'n/a')} | {r['guide_tokens']:.1f} | {fmt(rel, '{:.2f}×', 'n/a')} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows, out):
    """Draw `out` (curves.png) from metrics.jsonl rows: the SFT learning curves (val loss; greedy exact-plan rate and
    mean exact success on val) beside the GRPO ones (reward; greedy accuracy on val), one line per stage. Needs
    matplotlib (optional): returns None without it, or without curves to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sft = sorted({r["stage"] for r in rows if r["stage"].startswith("sft-")})
    rl = sorted({r["stage"] for r in rows if r["stage"].startswith("grpo-")})
    if not sft and not rl:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for stage in sft:
        evals = [r for r in rows if r["stage"] == stage and "val_plan_exact" in r]
        steps = [r["step"] for r in evals]
        axes[0].plot(steps, [r["val_loss"] for r in evals], label=stage)
        if all(r["val_plan_exact"] is not None for r in evals):     # the oracle measures: mathsim only
            axes[1].plot(steps, [r["val_plan_exact"] for r in evals], label=f"{stage}: exact plans")
            axes[1].plot(steps, [r["val_exact_success"] for r in evals], ls="--", label=f"{stage}: exact success")
        axes[1].plot(steps, [r["val_accuracy"] for r in evals], ls=":", marker=".", label=f"{stage}: core accuracy")
    for stage in rl:
        steps = [r for r in rows if r["stage"] == stage and r.get("reward") is not None]
        evals = [r for r in rows if r["stage"] == stage and "val_accuracy" in r]
        axes[2].plot([r["step"] + 1 for r in steps], [r["reward"] for r in steps], label=stage)
        line, = axes[3].plot([r["step"] for r in evals], [r["val_accuracy"] for r in evals], marker="o", label=stage)
        if evals and all(r.get("val_executability") is not None for r in evals):   # the oracle: mathsim only
            axes[3].plot([r["step"] for r in evals], [r["val_executability"] for r in evals], ls="--",
                         color=line.get_color(), label=f"{stage}: executability")
    axes[0].set(xlabel="SFT step", ylabel="loss on canonical val strategies", title="SFT: val loss")
    axes[1].set(xlabel="SFT step", ylabel="share / probability / accuracy", title="SFT: greedy strategies on val",
                ylim=(0, 1))
    axes[2].set(xlabel="GRPO step", ylabel="mean reward (own reward)", title="GRPO: reward")
    axes[3].set(xlabel="GRPO step", ylabel="greedy accuracy / executability on val", title="GRPO: val")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the eval and table stages

@dataclass
class EvalConfig:
    stage: ClassVar[str] = "eval"
    batch_size: int = 64
    decline_gate: bool = False   # a guide declines problems more surprising to it than every val problem

    def __post_init__(self):
        at_least(self, 1, "batch_size")


@dataclass
class DecodeConfig:
    """The run's strategy budget: the most tokens the guide may write, one figure for every stage that decodes
    (SFT's and GRPO's validation, GRPO's rollouts, evaluation), so RL never scores -1 for a truncation that
    evaluation would not make. Set by --max-new-tokens on the first such stage (or a preset) and kept by the run."""
    stage: ClassVar[str] = "decode"
    max_new_tokens: int = 160

    def __post_init__(self):
        at_least(self, 1, "max_new_tokens")


def strategy_budget(args, run):
    """The run's strategy budget (DecodeConfig): recorded by the first stage that decodes and kept by every later
    one; a later stage given another --max-new-tokens stops with one line (run_dir.Run.check_config)."""
    recorded = run.recorded(DecodeConfig.stage)
    if recorded is not None and getattr(args, "max_new_tokens", None) is None:
        return recorded["max_new_tokens"]
    cfg = config.stage_config(DecodeConfig, args)
    run.check_config(cfg.stage, cfg)
    return cfg.max_new_tokens


def eval_system(run, endpoints, cfg, name, guide, role="core", budget=None, device="cpu"):
    """One system on the test split and the held-out-phrasing split (evaluate.py says what is measured): guide
    (checkpoint path, 'teacher' or 'none') + core (role core|large), cfg an EvalConfig, budget the run's strategy
    budget (strategy_budget) when the guide is a checkpoint. Appends its row to results.json and rewrites
    results.md; the per-task rows go to eval/<name>.jsonl. A row is kept only while its guide's files and settings
    are the same."""
    results_path = run.file("results.json")
    results = run_dir.read_json(results_path) if os.path.exists(results_path) else []
    spec = dict(name=name, guide=guide, core_role=role, **asdict(cfg))
    if guide not in ("none", "teacher"):                 # a guide checkpoint writes within the run's budget
        spec["max_new_tokens"] = budget
        spec["guide_fingerprint"] = run_dir.guide_fingerprint(run, guide)   # a retrained guide is evaluated again
    if any(r["spec"] == spec for r in results):
        print(f"eval: {name!r} already in {results_path}, kept (the same guide files, the same settings)")
        return
    # a real benchmark (gsm8k) has no held-out-phrasing split: its ood column stays empty
    has_ood = os.path.exists(run.file("data", "ood.jsonl"))
    test = run_dir.load_tasks(run, "test") + (run_dir.load_tasks(run, "ood") if has_ood else [])
    client = execute.client_for(endpoints, role, run)
    guide_tokens, teacher_dollars, failed = [0] * len(test), [0.0] * len(test), {}
    if guide == "none":
        strategies = [None] * len(test)
    elif guide == "teacher":
        teacher = execute.client_for(endpoints, "teacher", run)
        # the teacher asked as acceptance sampling asked it (that stage's recorded configuration, else the default)
        name_quantities = (run.recorded("sample") or {}).get("name_quantities", SampleConfig.name_quantities)
        taught = execute.ask_teacher(teacher, test, "teacher on test+ood", name_quantities=name_quantities)
        strategies = [strategy for _, strategy in taught]
        teacher_dollars = [None if s is None else teacher.dollars(r) for r, s in taught]
        # a task whose teacher call failed for good is counted as failed, never quietly run without a strategy
        failed = {i: r for i, (r, s) in enumerate(taught) if s is None}
    else:
        guide_net, tok = run_dir.load_guide(run, guide, device)
        strategies, guide_tokens = guide_strategies(guide_net, tok, test, budget, cfg.batch_size)
        if cfg.decline_gate:
            strategies, surprise, limit = decline_gate(guide_net, tok, run_dir.load_tasks(run, "val"), test,
                                                       strategies, cfg.batch_size)
    todo = [i for i in range(len(test)) if i not in failed]
    core_replies, verdicts = execute.run_strategies(client, [test[i] for i in todo], [strategies[i] for i in todo],
                                             f"{name}: core")
    replies, correct = failed | dict(zip(todo, core_replies)), dict(zip(todo, verdicts))
    per_task = task_rows(test, strategies, [replies[i] for i in range(len(test))],
                         [correct.get(i) for i in range(len(test))], client, guide_tokens, teacher_dollars)
    if cfg.decline_gate:
        for row, x in zip(per_task, surprise):
            row["surprise"] = round(x, 4)
    os.makedirs(run.file("eval"), exist_ok=True)
    run_dir.write_jsonl(run.file("eval", f"{run_dir.slug(name)}.jsonl"), per_task)
    alone_path = run.file("eval", "core-alone.jsonl")
    alone_rows = {r["id"]: r for r in run_dir.read_jsonl(alone_path)} if os.path.exists(alone_path) else None
    summary = summarize([r for r in per_task if r["split"] == "test"], client.model, guide, alone_rows)
    on_test = [(t, s) for t, s in zip(test, strategies) if t.split == "test"]
    summary["executability"] = executability([t for t, _ in on_test], [s for _, s in on_test])   # an oracle
    ood = [r for r in per_task if r["split"] == "ood" and not r["failed"]]
    k_ood = sum(r["correct"] for r in ood)
    summary.update(n_ood=len(ood), accuracy_ood=k_ood / max(1, len(ood)) if has_ood else None,
                   accuracy_ood_ci=wilson(k_ood, len(ood)) if has_ood else None)
    if guide != "none" and has_ood:
        shows = families.family_of(test[0]).shows_held_out          # an oracle of the offline worlds
        held_out = {t.id: shows(t.problem) for t in test if t.split == "ood"} if shows else {}
        summary.update(declined_rate_ood=declined_share(ood),
                       declined_rate_ood_held_out=declined_share([r for r in ood if held_out.get(r["id"])]),
                       declined_rate_ood_none=declined_share([r for r in ood if held_out.get(r["id"]) is False]))
    if cfg.decline_gate and guide not in ("none", "teacher"):
        summary["decline_limit"] = round(limit, 4)
    with run.writer("results"):          # another system's eval may have added its row since we read the file
        results = run_dir.read_json(results_path) if os.path.exists(results_path) else []
        results = [r for r in results if r["name"] != name] + [dict(name=name, spec=spec, **summary)]
        run_dir.write_json(results_path, results)
        checkpoint.atomic_write(run.file("results.md"), table(results))
    run.log("eval", **summary)
    print(f"eval: {name}: accuracy {summary['accuracy']:.3f} "
          f"[{summary['accuracy_ci'][0]:.3f}, {summary['accuracy_ci'][1]:.3f}]" + (
              f", on held-out phrasings {summary['accuracy_ood']:.3f} [{summary['accuracy_ood_ci'][0]:.3f}, "
              f"{summary['accuracy_ood_ci'][1]:.3f}]" if has_ood else ""))


def stage_table(args, run):
    """Print results.md (and draw curves.png when matplotlib is installed), then one JSON summary line."""
    results = run_dir.read_json(run.file("results.json"))
    text = table(results)
    checkpoint.atomic_write(run.file("results.md"), text)
    print(text, end="")
    metrics = run.file("metrics.jsonl")
    rows = run_dir.read_jsonl(metrics, required=("stage",)) if os.path.exists(metrics) else []
    plot = plot_curves(rows, run.file("curves.png"))
    if plot:
        print(f"SFT and GRPO learning curves -> {plot}")
    dollars = {r["name"]: dollars_per_1k(r) for r in results}
    summary = dict(run=run.path, wall_s=args.wall_s, tasks=results[0]["n"] if results else 0,
                   accuracy={r["name"]: round(r["accuracy"], 4) for r in results},
                   accuracy_ood={r["name"]: run_dir.rounded(r["accuracy_ood"]) for r in results},
                   dollars_per_1k={k: None if v is None else round(v, 4) for k, v in dollars.items()})
    print(json.dumps(summary))
