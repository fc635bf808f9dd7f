"""Where is a trained guide's headroom? Two oracle measures behind docs/experiments.md's GRPO levers (analysis only: the
offline world's hidden solutions score strategies here; nothing feeds training or checkpoint choice).

  1. What GRPO's rollouts can teach (`--guide G`): the guide's greedy strategy for each val task, and --samples
     strategies of each at every --temperature, drawn as GRPO draws them (generate.generate_groups). Prints the share
     that is the task's plan (mathsim.plan_matches) overall and, apart, on the tasks greedy gets wrong: RL can move
     the greedy guide only where a sample is right and greedy is not.
  2. What a perfect gate would give (`--systems NAME ...`): for each evaluated system (eval/<name>.jsonl), test
     accuracy as evaluated and with an oracle gate that defers exactly where the strategy is not the task's plan,
     scoring there the core alone's answer from the baselines stage (eval/core-alone.jsonl; one draw per task).

Example: python benchmarks/headroom.py --run runs/default --guide sft-accepted/best --temperature 1.0 0.7 \
             --systems exectune-w-o-rl supervised-gcop advisor-style-gcop
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch

import evaluate
import families
import generate
import run_dir
import strategy_format


def is_plan(task, text):
    verdict = evaluate.is_plan(task, text)
    if verdict is None:
        raise run_dir.UserError(f"task {task.id}: its family has no plan oracle (mathsim has one)")
    return verdict


def rollout_headroom(run, guide, temperatures, samples, max_new_tokens, batch=16):
    net, tok = run_dir.load_guide(run, guide)
    net.eval()
    val = run_dir.load_tasks(run, "val")
    greedy_texts, _ = evaluate.guide_strategies(net, tok, val, max_new_tokens, 64, desc="greedy")
    greedy = [is_plan(t, s) for t, s in zip(val, greedy_texts)]
    wrong = [i for i, ok in enumerate(greedy) if not ok]
    print(f"{guide}: greedy writes the plan for {sum(greedy)} of {len(val)} val tasks")
    eos = tok.encode_single_token("<|eos|>")
    for temperature in temperatures:
        sampling = generate.SamplingOptions(max_new_tokens, eos, temperature=temperature,
                                            stop_strings=[strategy_format.STOP])
        right = []                                           # per task: how many of its samples are the plan
        for start in range(0, len(val), batch):
            chunk = val[start:start + batch]
            gens = [torch.Generator().manual_seed(start + j) for j in range(len(chunk))]
            out = generate.generate_groups(net, [families.prompt_tokens(tok, t) for t in chunk], samples, sampling,
                                           generator=gens, tokenizer=tok)
            for j, task in enumerate(chunk):
                right.append(sum(is_plan(task, s) for s in out.texts[j * samples:(j + 1) * samples]))
        on_wrong = [right[i] for i in wrong]
        print(f"  temperature {temperature}: {sum(right) / (samples * len(val)):.1%} of samples are the plan; "
              f"of the {len(wrong)} tasks greedy gets wrong, {sum(r > 0 for r in on_wrong)} have a right sample "
              f"in {samples} ({sum(on_wrong) / max(1, samples * len(wrong)):.1%} of their samples)")


def gate_headroom(run, systems):
    tasks = {t.id: t for t in run_dir.load_tasks(run, "test")}

    def rows(name):
        path = run.file("eval", f"{name}.jsonl")
        if not os.path.exists(path):
            raise run_dir.UserError(f"no {path}: evaluate that system first (exectune.py eval)")
        return [r for r in run_dir.read_jsonl(path) if r["split"] == "test"]

    alone = {r["id"]: r["correct"] for r in rows("core-alone")}
    for name in systems:
        evaluated = rows(name)
        gated = sum(r["correct"] if is_plan(tasks[r["id"]], r["strategy"] or "") else alone[r["id"]]
                    for r in evaluated)
        print(f"{name}: test accuracy {sum(r['correct'] for r in evaluated) / len(evaluated):.3f}, "
              f"with a perfect gate {gated / len(evaluated):.3f} ({len(evaluated)} tasks)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a run directory that has been through sft (and eval, for --systems)")
    p.add_argument("--guide", help="a guide of the run, e.g. sft-accepted/best")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--samples", type=int, default=8, help="samples per task (GRPO's group size)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--systems", nargs="*", default=[], help="evaluated systems by their eval/ file name")
    args = p.parse_args()
    if not args.guide and not args.systems:
        p.error("nothing to measure: give --guide, --systems, or both")
    if args.samples < 1 or any(t <= 0 for t in args.temperature):
        p.error("--samples must be >= 1 and every --temperature > 0")
    if not os.path.isdir(args.run):
        p.error(f"--run {args.run}: no such directory")
    run = run_dir.Run(args.run)
    try:
        with torch.no_grad():
            if args.guide:
                rollout_headroom(run, args.guide, args.temperature, args.samples, args.max_new_tokens)
            if args.systems:
                gate_headroom(run, args.systems)
    except run_dir.UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
