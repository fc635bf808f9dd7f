"""What each inference-time way to decline gives on a finished run: the gate table of docs/experiments.md ("A guide
that knows when not to guide").

1. The guide's rows as evaluated without a gate (eval/<--system>.jsonl) and the core alone's (eval/core-alone.jsonl).
   A declined task is answered by the core alone's row: a decline sends the core-alone request with the same draw,
   which is the very request that row's reply answered (the run's cache returns it), so the comparison is paired.
2. Each gate declines from the problem text and the guide alone, its threshold set on val (no core call, no oracle):
     surprise > val max        the guide's mean cross-entropy per problem token (evaluate.problem_surprise) above
                               every val problem's: the gate `eval --decline-gate` uses
     surprise > val q          above the val q-quantile (--quantiles), a looser limit
     log-prob < val min        the guide's log-probability of its own greedy strategy (re-encoded) below every val
                               strategy's: how sure it is of the plan, rather than of the problem
     operand not in problem    a step of the strategy names an operand (neither a step's result nor a number) that
                               the problem text does not contain: a check of the strategy against the problem alone
3. Prints a markdown table: declined shares (test; ood with a held-out phrasing and without, an oracle of the
   offline world used for reporting only), accuracy on test and ood, and test's paired difference to no gate. A task the
   guide itself declines (its strategy is strategy_format.DECLINE) counts as declined under every gate.

Example: python benchmarks/decline_levers.py --run runs/default --guide grpo-structure/best \
             --system "ExecTune without the gate"
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch

import evaluate
import families
import generate
import run_dir
import strategy_format


@torch.no_grad()
def strategy_logprob(guide, tok, task_list, strategies, batch_size=64):
    """Sum of the guide's log-probabilities of each strategy's tokens (and its EOS) after the task's prompt."""
    eos = tok.encode_single_token("<|eos|>")
    out = []
    for i in range(0, len(task_list), batch_size):
        prompts = [families.prompt_tokens(tok, t) for t in task_list[i:i + batch_size]]
        completions = [tok.encode(text, disallowed_special=()) + [eos] for text in strategies[i:i + batch_size]]
        width = max(map(len, completions))
        padded = torch.tensor([c + [eos] * (width - len(c)) for c in completions])                   # (B, T)
        real = torch.arange(width)[None] < torch.tensor([len(c) for c in completions])[:, None]      # (B, T)
        logp = generate.completion_logprobs(guide, prompts, padded).cpu()                             # (B, T)
        out.extend((logp * real).sum(1).tolist())
    return out


def names_an_absent_operand(strategy, problem):
    """Does a valid strategy operate on something the problem never mentions ("the apples at the shop" where the
    problem has no such words)? Step results, pronouns and numbers (strategy_format's closed operands) pass."""
    parsed = strategy_format.parse_strategy(strategy)
    text = problem.lower()
    return parsed.valid and any(
        not strategy_format._CLOSED.fullmatch(operand) and re.sub(r"^the (number of )?", "", operand.lower()) not in text
        for step in parsed.steps for operand in step.operands)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--guide", required=True, help="the checkpoint the system's rows came from")
    p.add_argument("--system", required=True, help="its evaluation without a gate, as named in results.json")
    p.add_argument("--quantiles", type=float, nargs="*", default=[0.99, 0.95])
    p.add_argument("--max-new-tokens", type=int, default=160, help="for the val strategies (the run's budget)")
    args = p.parse_args(argv)
    run = run_dir.Run(args.run)
    rows_path = run.file("eval", f"{run_dir.slug(args.system)}.jsonl")
    rows = {r["id"]: r for r in run_dir.read_jsonl(rows_path, required=("id", "split", "strategy"))}
    alone = {r["id"]: r for r in run_dir.read_jsonl(run.file("eval", "core-alone.jsonl"), required=("id",))}
    tasks = [t for split in ("test", "ood") for t in run_dir.load_tasks(run, split)]
    val = run_dir.load_tasks(run, "val")
    guide, tok = run_dir.load_guide(run, args.guide)
    guide.eval()

    surprise_val = evaluate.problem_surprise(guide, tok, val, 64)
    surprise = evaluate.problem_surprise(guide, tok, tasks, 64)
    val_strategies, _ = evaluate.guide_strategies(guide, tok, val, args.max_new_tokens, 64)
    logprob_val = strategy_logprob(guide, tok, val, val_strategies)
    logprob = strategy_logprob(guide, tok, tasks, [rows[t.id]["strategy"] for t in tasks])
    sorted_val = sorted(surprise_val)
    gates = {"no gate": [False] * len(tasks),
             "surprise > val max": [x > sorted_val[-1] for x in surprise]}
    for q in args.quantiles:
        limit = sorted_val[min(len(val) - 1, int(q * len(val)))]
        gates[f"surprise > val {q:g} quantile"] = [x > limit for x in surprise]
    gates["strategy log-prob < val min"] = [x < min(logprob_val) for x in logprob]
    gates["operand not in problem"] = [names_an_absent_operand(rows[t.id]["strategy"] or "", t.problem) for t in tasks]

    shows = families.family_of(tasks[0]).shows_held_out
    held_out = {t.id: bool(shows and shows(t.problem)) for t in tasks}

    def share(values):
        return f"{sum(values) / len(values):.3f}" if values else "—"

    def correct(task, declined):
        return bool((alone if declined else rows)[task.id].get("correct"))

    test = [t for t in tasks if t.split == "test"]
    ood = [t for t in tasks if t.split == "ood"]
    base = {t.id: correct(t, False) for t in test}
    print(f"run {args.run}, guide {args.guide}, rows {rows_path}")
    print("| gate | declined: test | ood, held-out phrasing | ood, none | test accuracy | paired Δ test | "
          "ood accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, declined in gates.items():
        by = {t.id: gated or bool(rows[t.id].get("declined")) for t, gated in zip(tasks, declined)}
        acc_test = sum(correct(t, by[t.id]) for t in test) / len(test)
        delta = sum(correct(t, by[t.id]) - base[t.id] for t in test) / len(test)
        acc_ood = sum(correct(t, by[t.id]) for t in ood) / max(1, len(ood))
        print(f"| {name} | {share([by[t.id] for t in test])} | "
              f"{share([by[t.id] for t in ood if held_out[t.id]])} | "
              f"{share([by[t.id] for t in ood if not held_out[t.id]])} | {acc_test:.3f} | {delta:+.3f} | "
              f"{acc_ood:.3f} |")


if __name__ == "__main__":
    try:
        main()
    except run_dir.UserError as e:
        sys.exit(f"error: {e}")
