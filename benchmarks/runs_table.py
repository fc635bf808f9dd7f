"""docs/experiments.md's tables from whole runs: one row per system, one column per run, and where a run's time went.

    python benchmarks/runs_table.py default=docs/results_default.json seed1=docs/runs/a003e03-seed1/results.json ...
    python benchmarks/runs_table.py --stages docs/metrics_default.jsonl

1. Each cell: accuracy on test with its 95% Wilson interval, then the executability oracle (the mean cheap-core
   comprehension of the verbs of the system's valid test strategies; "—" without strategies or in a run made before
   the column existed), then the cost relative to the large core alone.
2. --stages: each stage's wall time from a run's metrics.jsonl. A stage logs its last line when it ends, so a stage
   took from the end of the stage before it to its own last line; the two SFT (and GRPO) guides train side by side
   and count as one stage.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402


def cell(row, large_cost):
    lo, hi = row["accuracy_ci"]
    total = evaluate.dollars_per_1k(row)
    rel = total / large_cost if total is not None and large_cost else None
    return (f"{row['accuracy']:.3f} ({lo:.3f}–{hi:.3f}) · {evaluate.fmt(row.get('executability'), '{:.2f}')} · "
            f"{evaluate.fmt(rel, '{:.2f}×', 'n/a')}")


def runs_table(runs):
    """Markdown: one row per system (in the first run's order), one column per run."""
    names = list(runs)
    systems = [r["name"] for r in runs[names[0]]]
    lines = ["| system | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for system in systems:
        cells = []
        for name in names:
            rows = {r["name"]: r for r in runs[name]}
            large = rows.get("large core alone")
            large_cost = large and evaluate.dollars_per_1k(large)
            cells.append(cell(rows[system], large_cost) if system in rows else "—")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


STAGE_GROUPS = [("data", ["data"]), ("tokenizer", ["tokenizer"]), ("baselines", ["baselines"]),
                ("sample", ["sample"]), ("sft, both guides", ["sft-accepted", "sft-raw"]),
                ("grpo, both guides", ["grpo-structure", "grpo-outcome"]), ("eval", ["eval"])]


def stage_times(rows):
    """[(stage group, seconds)] from metrics.jsonl rows (module docstring, 2)."""
    ends = {group: max((r["time"] for r in rows if r["stage"] in stages), default=None)
            for group, stages in STAGE_GROUPS}
    out, before = [], min(r["time"] for r in rows)
    for group, _ in STAGE_GROUPS:
        if ends[group] is not None:
            out.append((group, ends[group] - before))
            before = ends[group]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", help="NAME=path/to/results.json, one per column")
    p.add_argument("--stages", help="a run's metrics.jsonl: print each stage's wall time")
    a = p.parse_args()
    if a.runs:
        runs = {}
        for spec in a.runs:
            name, sep, path = spec.partition("=")
            if not sep:
                p.error(f"expected NAME=path/to/results.json, got {spec!r}")
            runs[name] = json.load(open(path))
        print(runs_table(runs))
    if a.stages:
        rows = [json.loads(line) for line in open(a.stages)]
        print("| stage | wall time |\n|---|---|")
        for group, seconds in stage_times(rows):
            print(f"| {group} | {int(seconds // 60)} min {int(seconds % 60)} s |")


if __name__ == "__main__":
    main()
