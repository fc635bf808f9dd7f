"""Grading time of one batch: HumanEval's 164 canonical solutions, and a codesim batch as the recipe grades it.

python benchmarks/grading_speed.py [--workers 2]   (prints one JSON line; run from the repository root)
The line says which isolation graded the batch (bwrap or guards) and whether each host had its own cgroup."""
import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import code_bench as cb  # noqa: E402
import codesim as cs  # noqa: E402
import sandbox  # noqa: E402
import sim_code  # noqa: E402
from sim_math import CHEAP  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--workers", type=int, default=2)
args = parser.parse_args()

tasks = cb.load_humaneval()
t0 = time.monotonic()
results = cb.run_tests(tasks, [t.solution for t in tasks], workers=args.workers)
humaneval_s = time.monotonic() - t0
assert all(r.status == "passed" for r in results), [r.reason for r in results if r.status != "passed"]

# codesim: 50 test tasks x 8 sampled functions each, as families.grade_replies gets them (duplicates included)
code = cs.generate_codesim(50, 0, "test")
rng = random.Random(0)
task_list = [t for t in code for _ in range(8)]
sources = [sim_code.write_code(t.problem, None, CHEAP, rng) for t in task_list]
t0 = time.monotonic()
verdicts = cs.codesim_verdicts(task_list, sources, workers=args.workers)
codesim_s = time.monotonic() - t0
cgroups = bool(getattr(sandbox, "cgroup_parents", dict)())     # (an older sandbox has none)
print(json.dumps({"isolation": sandbox.isolation()[0], "cgroups": cgroups,
                  "humaneval_164_s": round(humaneval_s, 2), "codesim_400_s": round(codesim_s, 2),
                  "codesim_distinct": len(set(zip([t.problem for t in task_list], sources))),
                  "codesim_pass_rate": round(sum(verdicts) / len(verdicts), 3)}))
