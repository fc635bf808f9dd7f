"""Teacher-guided acceptance sampling (ExecTune's data): which teacher strategies the guide learns from.

1. The teacher writes K strategies for every training task (asked, by default, to name each quantity as the problem
   names it: strategy_format.NAME_QUANTITIES).
2. The cheap core executes each valid strategy M times. A strategy is *accepted* when it is valid, leaks no answer
   and all M executions are correct: the acceptance rule of the paper, applied as it is.
3. Augmentation (`--renamings R`, where the family can rename): each training problem gets R copies with new
   numbers in the same sentences (mathsim.renamed), each of its accepted strategies is carried over with the numbers
   it names renamed, and the copy is run through the same acceptance rule on its new problem (divisions, leaks and
   the answer all change). The copies are tasks of their own (renamed_tasks.jsonl); no teacher call is made.
4. Every distinct accepted strategy of a task, renamed copies included, is kept (accepted.jsonl: ExecTune's SFT
   data), cheapest first (`--keep N` keeps N of them, by `--select`); raw.jsonl keeps every teacher strategy of the
   original problems (the supervised-GCoP baseline's).
5. Chunks of tasks are written whole, so a killed run resumes from its last complete chunk and ends with exactly
   what an uninterrupted one writes.
"""
import glob
import os
import random
from dataclasses import dataclass
from typing import ClassVar

from tqdm import tqdm

import config
import execute
import families
import run_dir
import strategy_format
from config import at_least
from core_client import CoreError


@dataclass
class SampleConfig:
    stage: ClassVar[str] = "sample"
    k: int = 32                  # teacher strategies per task: with the echoing teacher 16 draws left the accepted
                                 # guide reading 73% of val plans, 32 draws 87.5% (docs/experiments.md, this
                                 # world's levers)
    m: int = 2                   # cheap-core executions per strategy; accept only when all are correct
    keep: int = 0                # accepted strategies kept per task, in `select` order; 0: every distinct one
    select: str = "cheapest"     # cheapest: fewest core dollars first; handles: fewest numbers looked up (so
                                 # most quantities named by the problem's own phrases) first, then cheapest
    name_quantities: bool = True  # ask the teacher to name quantities as the problem does
                                  # (strategy_format.NAME_QUANTITIES)
    renamings: int = 0           # copies of each training problem with new numbers, its accepted strategies carried
                                 # over and accepted again there: a lever, not the default (docs/experiments.md,
                                 # the reading levers: five of seven reading draws at 87-90%, the default run's
                                 # own at 65%)
    chunk: int = 500             # tasks per resumable chunk

    def __post_init__(self):
        at_least(self, 1, "k", "m", "chunk")
        at_least(self, 0, "keep", "renamings")
        if self.select not in SELECT_RULES:
            raise ValueError(f"--select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")


def stage_sample(args, run):
    cfg = config.stage_config(SampleConfig, args)
    run.check_config("sample", cfg)
    raw_path, accepted_path = run.file("raw.jsonl"), run.file("accepted.jsonl")
    train = run_dir.load_tasks(run, "train")
    # One file per chunk of tasks, written whole: a task is done only when its chunk's file exists, and then every
    # one of its K rows is in it. A kill at any moment loses at most the chunk being sampled.
    renamings = cfg.renamings if train and families.family_of(train[0]).renamed else 0
    if cfg.renamings and not renamings:
        print(f"sample: {train[0].family if train else 'this'} family has no renaming, --renamings ignored")
    chunks = [train[i:i + cfg.chunk] for i in range(0, len(train), cfg.chunk)]
    paths = [run.file("sample", f"chunk-{i:05d}.jsonl") for i in range(len(chunks))]
    renamed_paths = [run.file("sample", f"renamed-{i:05d}.jsonl") for i in range(len(chunks))]
    todo = [i for i, path in enumerate(paths) if not os.path.exists(path)]
    if not todo and os.path.exists(accepted_path):
        print(f"sample: {accepted_path} exists, kept")
        return
    os.makedirs(run.file("sample"), exist_ok=True)
    endpoints = execute.Endpoints.from_args(args)
    teacher, core = execute.client_for(endpoints, "teacher", run), execute.client_for(endpoints, "core", run)
    for i in tqdm(todo, desc="sample chunks", disable=len(todo) <= 1):
        rows = sample_chunk(chunks[i], cfg, teacher, core)
        if renamings:                 # written first: a chunk is done when its chunk file exists
            run_dir.write_jsonl(renamed_paths[i], rename_chunk(chunks[i], rows, renamings, cfg, core))
        run_dir.write_jsonl(paths[i], rows)
    fields = ("task_id", "strategy", "accepted", "dollars")
    raw = [row for path in paths for row in run_dir.read_jsonl(path, required=fields)]
    renamed = renamed_rows(run)
    run_dir.write_jsonl(raw_path, raw)
    accepted = select_accepted(raw + renamed, cfg.keep, cfg.select)
    kept_ids = {r["task_id"] for r in accepted}
    if renamings:
        run_dir.write_jsonl(run.file(run_dir.RENAMED_TASKS), list({r["task_id"]: r["task"] for r in renamed
                                                                   if r["task_id"] in kept_ids}.values()))
    run_dir.write_jsonl(accepted_path, accepted)
    n_tasks = len({r["task_id"] for r in raw})
    covered = len(kept_ids & {r["task_id"] for r in raw})       # of the original problems
    rate = sum(r["accepted"] for r in raw) / max(1, len(raw))
    teacher_dollars = teacher.stats()["dollars"]
    # how many tasks have an accepted strategy that names no number (every quantity by a phrase), within the
    # first k teacher draws: what the "handles" rule has to choose from at each K
    phrase_only = {k: len({r["task_id"] for r in raw if r["accepted"] and r["draw"] < k
                           and strategy_format.numbers_named(r["strategy"]) == 0})
                   for k in sorted({1, 2, 4, 8, 16, cfg.k}) if k <= cfg.k}
    renamed_accepted = sum(r["accepted"] for r in renamed)
    run.log("sample", strategies=len(raw), acceptance_rate=round(rate, 4), accepted_kept=len(accepted),
            tasks_covered=covered, tasks_with_phrase_only_accepted=phrase_only, renamed_tried=len(renamed),
            renamed_accepted=renamed_accepted, teacher=teacher.stats(), core=core.stats())
    renamed_note = (f"; {renamed_accepted} of {len(renamed)} strategies carried over to "
                    f"{len({r['task_id'] for r in renamed})} renamed problems accepted" if renamed else "")
    print(f"sample: {len(raw)} teacher strategies for {n_tasks} tasks; acceptance rate {rate:.1%}{renamed_note}; "
          f"kept {len(accepted)} covering {covered} tasks; teacher dollars this call "
          f"{'unknown' if teacher_dollars is None else f'${teacher_dollars:.4f}'}")


def renamed_rows(run):
    """Every renamed strategy the sample stage ran (sample/renamed-*.jsonl), accepted or not, in chunk order."""
    paths = sorted(glob.glob(run.file("sample", "renamed-*.jsonl")))
    return [row for path in paths for row in run_dir.read_jsonl(path, required=("task_id", "strategy", "accepted",
                                                                                "dollars", "task"))]


def sample_chunk(chunk, cfg, teacher, core):
    """K teacher strategies per task, each valid one run M times by the cheap core. One row per strategy."""
    taught = execute.ask_teacher(teacher, chunk, "teacher", k=cfg.k, name_quantities=cfg.name_quantities)
    rows = []
    for i, t in enumerate(chunk):
        for d in range(cfg.k):
            reply, strategy = taught[i * cfg.k + d]
            if strategy is not None:
                rows.append(candidate(t, strategy, draw=d, teacher_dollars=teacher.dollars(reply)))
    return run_acceptance(rows, cfg, core, "cheap core executes")


def rename_chunk(chunk, rows, renamings, cfg, core):
    """Each task's distinct accepted strategies carried over to `renamings` copies of it with new numbers, each run
    through the acceptance rule there. One row per renamed strategy, with its new task (`task`) beside it."""
    accepted = {}
    for r in rows:
        if r["accepted"] and r["strategy"] not in accepted.setdefault(r["task_id"], {}):
            accepted[r["task_id"]][r["strategy"]] = r["draw"]
    out = []
    for t in chunk:
        for n in range(renamings if accepted.get(t.id) else 0):
            # seeded by the task alone, so a chunk resumed or sampled in another order renames alike
            copy = families.family_of(t).renamed(t, random.Random(f"{t.id} renaming {n}"), run_dir.renamed_id(t.id, n))
            if copy is None:
                continue
            new_task, carry_over = copy
            for strategy, draw in accepted[t.id].items():
                renamed_strategy = carry_over(strategy)
                if renamed_strategy is not None:
                    row = candidate(new_task, renamed_strategy, draw=draw, renamed_from=t.id)
                    out.append(dict(row, task=new_task.to_json()))
    return run_acceptance(out, cfg, core, "cheap core executes renamed")


def candidate(task, strategy, **fields):
    """A strategy's row before the core runs it: parsed and checked for leaks."""
    family = families.family_of(task)
    parsed = family.parse_strategy(strategy)
    return dict(task_id=task.id, strategy=strategy, valid=parsed.valid,
                invalid_reason=None if parsed.valid else parsed.error, leaks=family.leaks(strategy, task), runs=[],
                _task=task, **fields)


def run_acceptance(rows, cfg, core, what):
    """Each valid row's strategy run M times by the cheap core; the rows get their runs, mean dollars and verdict."""
    runs_needed = [(i, m) for i, r in enumerate(rows) if r["valid"] for m in range(cfg.m)]
    executions, verdicts = execute.run_strategies(core, [rows[i]["_task"] for i, _ in runs_needed],
                                           [rows[i]["strategy"] for i, _ in runs_needed], what,
                                           draws=[m for _, m in runs_needed])
    for (i, _), out, correct in zip(runs_needed, executions, verdicts):
        if not isinstance(out, CoreError):
            rows[i]["runs"].append(dict(correct=correct, dollars=core.dollars(out), output_tokens=out.output_tokens))
    for r in rows:
        del r["_task"]
        costs = [x["dollars"] for x in r["runs"] if x["dollars"] is not None]
        r["dollars"] = sum(costs) / len(costs) if costs else None
        r["accepted"] = is_accepted(r, cfg.m)
    return rows


def is_accepted(row, m):
    """The acceptance rule: valid, leaks nothing, and all M executions ran and were correct."""
    return bool(row["valid"] and not row["leaks"] and len(row["runs"]) == m and all(x["correct"] for x in row["runs"]))


# The order in which a task's accepted strategies are kept: cheapest first is ExecTune's own rule; a strategy that
# names quantities by the problem's own phrases costs the core a few more input tokens but is copied, not looked up,
# so a small guide imitates it far more easily (docs/experiments.md, the reading levers).
def _cheapest(r):
    return r["dollars"] if r["dollars"] is not None else 0.0, len(r["strategy"])


SELECT_RULES = {"cheapest": _cheapest,
                "handles": lambda r: (strategy_format.numbers_named(r["strategy"]), *_cheapest(r))}


def select_accepted(raw, keep, select="cheapest"):
    """Per task, its distinct accepted strategies in SELECT_RULES[select] order, the first `keep` (0: all)."""
    by_task = {}
    for r in raw:
        if r["accepted"]:
            by_task.setdefault(r["task_id"], []).append(r)
    out = []
    for task_id, rows in by_task.items():
        rows.sort(key=SELECT_RULES[select])
        seen = set()
        for r in rows:
            if r["strategy"] not in seen and (keep == 0 or len(seen) < keep):
                seen.add(r["strategy"])
                out.append(dict(task_id=task_id, strategy=r["strategy"], dollars=r["dollars"]))
    return out
