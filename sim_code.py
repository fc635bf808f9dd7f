"""The simulated core as a programmer for `codesim` (docs/world.md §4, §6): it writes a real Python function.

1. `code_plan(problem, strategy, core)` reads the problem with codesim.read_codesim and the strategy with
   codesim.parse_code_strategy, and decides per step which primitive the core means to write, the chance it
   understands the step's verb (the comprehension table of docs/world.md §6; the large core understands every verb with
   at least its min_comprehension) and its accuracy (docs/world.md §4: step accuracy, minus the filler penalty per word
   beyond the step's canonical wording, minus the long penalty per step beyond 8). An invalid strategy is ignored:
   the core writes the whole function alone. At the first unclear step (a known verb without a readable operand) it
   abandons the strategy and writes the task's remaining steps alone, as sim_math does for mathsim.
2. `write_code(problem, strategy, core, rng)` samples the plan into source code (codesim.render_function). A verb
   not understood becomes a different primitive; a slip is a real bug (`slip`: a wrong predicate or constant, an
   off-by-one slice, a wrong reduction, a flipped sort, a forgotten step). Solving alone, each of the task's steps is
   right with the solo accuracy, and each distractor sentence is implemented as a step unless ignored (probability
   ignore_distractor).
3. Nothing here grades. `success_rates` samples code and runs each task's hidden tests in the sandbox: that is the
   core's success, and the estimate of `exact_success` for codesim. `p_bug_free` is the capability model's own
   number (every step written as asked, no distractor taken in, and the plan right): a bug that the tests cannot see
   passes anyway, so the measured rate sits at or a little above it.
"""
import random
import re
from dataclasses import dataclass
from functools import lru_cache

import codesim as cs
from sim_math import FILLER_OPENERS
from strategy_format import strategy_envelope

# Comprehension of each primitive's verb by the cheap core (docs/world.md §6). A step with no verb of the lexicon: 0.
COMPREHENSION = {"Keep/Filter": 1.0, "Drop/Remove": 0.9, "Map/Apply": 1.0, "Square/Double/Negate": 0.95,
                 "Sum/Product": 1.0, "Max/Min": 0.95, "Count": 0.9, "Sort": 1.0, "Sort descending": 0.85,
                 "Reverse": 0.95, "Take/Skip first k": 0.8, "Unique": 0.75, "Zip-with": 0.6}


@dataclass(frozen=True)
class CodePlan:
    task: cs.CodesimTask
    guided: tuple      # per followed strategy step: (primitive meant, chance the verb is understood, accuracy)
    alone: tuple       # the task's primitives the core writes on its own (all of them without a usable strategy)


@lru_cache(maxsize=4096)
def code_plan(problem: str, strategy: str | None, core) -> CodePlan:
    task = cs.read_codesim(problem)
    steps, error = cs.parse_code_strategy(strategy) if strategy is not None else ([], "no strategy")
    if error:
        return CodePlan(task, (), task.steps)
    guided = []
    for step in steps:
        if step.key is not None and step.prim is None:          # unclear: write the rest alone
            return CodePlan(task, tuple(guided), task.steps[len(guided):])
        accuracy = core.followed_accuracy(step.filler_words, len(steps))
        guided.append((step.prim, core.comprehension(step.key, COMPREHENSION), accuracy))
    return CodePlan(task, tuple(guided), ())


def slip(p: cs.Prim, rng: random.Random) -> cs.Prim | None:
    """A real bug in writing primitive p (None: the step is left out)."""
    swap = {"even": "odd", "odd": "even", "pos": "neg", "neg": "pos"}
    if p.kind in ("keep", "drop"):
        if p.sub in swap:
            return cs.Prim(p.kind, swap[p.sub])                                   # the wrong predicate
        if p.sub == "nonzero":
            return cs.Prim("drop" if p.kind == "keep" else "keep", p.sub)         # the predicate negated
        return cs.Prim(p.kind, p.sub, p.k + 1 if p.sub == "div" else p.k + rng.choice([-1, 1]))  # off by one
    if p.kind == "map":
        if p.sub in ("add", "sub", "mul"):
            return cs.Prim("map", p.sub, p.k + 1)                                 # the wrong constant
        return cs.Prim("map", {"square": "double", "double": "square", "negate": "abs", "abs": "negate"}[p.sub])
    if p.kind == "sort":
        return cs.Prim("sort", "desc" if p.sub == "asc" else "asc")
    if p.kind in ("take", "skip"):
        return cs.Prim(p.kind, "", max(0, p.k + rng.choice([-1, 1])))            # an off-by-one slice
    if p.kind == "zip":
        return cs.Prim("zip", {"add": "mul", "mul": "add", "max": "add"}[p.sub])
    if p.kind in cs.REDUCERS:
        return cs.Prim({"sum": "product", "product": "sum", "max": "min", "min": "max", "count": "sum"}[p.kind])
    return None                                                                   # reverse, unique: forgotten


def _other(p: cs.Prim | None, rng: random.Random) -> cs.Prim:
    """The primitive written for a verb not understood: a different one of the same shape."""
    while True:
        q = cs.Prim(rng.choice([r for r in cs.REDUCERS])) if p is not None and p.kind in cs.REDUCERS \
            else cs._random_prim(rng, True)
        if q != p:
            return q


def write_code(problem: str, strategy: str | None, core, rng: random.Random) -> str:
    """One function the core writes for the problem (following the strategy as far as it can)."""
    plan = code_plan(problem, strategy, core)
    written = []
    for prim, understood, accuracy in plan.guided:
        meant = prim if prim is not None and rng.random() < understood else _other(prim, rng)
        written.append(meant if rng.random() < accuracy else slip(meant, rng))
    if plan.alone or not plan.guided:
        for p in plan.alone:
            written.append(p if rng.random() < core.solo_accuracy else slip(p, rng))
        for d in plan.task.distractors:
            if rng.random() >= core.ignore_distractor:
                n_list = sum(1 for p in written if p is None or p.kind not in cs.REDUCERS)
                written.insert(rng.randint(0, n_list), d)
    return cs.render_function(plan.task.name, plan.task.two_lists, [p for p in written if p is not None])


def p_bug_free(problem: str, strategy: str | None, core) -> float:
    """The capability model's chance that the core writes the function exactly as planned and the plan is right."""
    plan = code_plan(problem, strategy, core)
    task = plan.task
    if any(p is None for p, _, _ in plan.guided):
        return 0.0
    pipeline = tuple(p for p, _, _ in plan.guided) + plan.alone
    if not _same_function(pipeline, task):
        return 0.0
    p = 1.0
    for _, understood, accuracy in plan.guided:
        p *= understood * accuracy
    if plan.alone or not plan.guided:
        p *= core.solo_accuracy ** len(plan.alone) * core.ignore_distractor ** len(task.distractors)
    return p


def _same_function(pipeline: tuple, task: cs.CodesimTask) -> bool:
    """Whether a pipeline passes the task's tests (analysis only; grading runs code in the sandbox)."""
    if not task.two_lists and any(p.kind == "zip" for p in pipeline):
        return False
    # As render_function writes it: the list steps in order, then the last reduction named, in the return line.
    reducers = [p for p in pipeline if p.kind in cs.REDUCERS]
    pipeline = tuple(p for p in pipeline if p.kind not in cs.REDUCERS) + tuple(reducers[-1:])
    return all(cs.reference_output(pipeline, *args) == expected for args, expected in task.tests)


def success_rates(items: list, core, n: int = 64, seed: int = 0, workers: int | None = None,
                  desc: str | None = None) -> list:
    """For each (problem, strategy or None): the share of n sampled functions that pass the task's hidden tests in
    the sandbox (codesim.codesim_verdicts). Sampling is seeded by (seed, position in items)."""
    task_list, sources = [], []
    for i, (problem, strategy) in enumerate(items):
        rng = random.Random(f"sim_code/{seed}/{i}")
        task_list += [cs.read_codesim(problem)] * n
        sources += [write_code(problem, strategy, core, rng) for _ in range(n)]
    verdicts = cs.codesim_verdicts(task_list, sources, workers=workers, desc=desc)
    return [sum(verdicts[i * n:(i + 1) * n]) / n for i in range(len(items))]


# ---------------------------------------------------------------------------------------------------------------
# Replies over the API (sim_core.complete calls these for codesim problems).
def core_reply(problem: str, strategy: str | None, core, rng: random.Random) -> str:
    """The core's reply: the function in a ```python block. Working alone it first restates every sentence of the
    task as a note, so its reply is longer, as a chain of thought is."""
    code = write_code(problem, strategy, core, rng)
    plan = code_plan(problem, strategy, core)
    notes = ""
    if plan.alone or not plan.guided:
        sentences = re.split(r"(?<=\.)\s+", problem.strip())[1:]
        notes = "Reading the task one sentence at a time:\n" + "\n".join(f"- {s}" for s in sentences) + "\n\n"
    return f"{notes}```python\n{code}```"


# The teacher's other wordings of each primitive (docs/world.md §5's "otherwise another verb"). Some are understood
# less well than the canonical step, and some not at all ("Add 3 to each element": `add` is not a code verb).
ALTERNATIVES = {
    "keep": ["Filter the list to the {p}.", "Keep only the {p}."],
    "drop": ["Drop the {p}.", "Remove all the {p}."],
    "map:square": ["Map each element to its square.", "Square every number."],
    "map:double": ["Map each element to double its value.", "Double every number."],
    "map:negate": ["Map each element to its negation.", "Negate every number."],
    "map:abs": ["Take the absolute value of each element.", "Apply the absolute value to each element."],
    "map:add": ["Add {k} to each element.", "Apply plus {k} to each element."],
    "map:sub": ["Subtract {k} from each element.", "Apply minus {k} to each element."],
    "map:mul": ["Multiply each element by {k}.", "Apply times {k} to each element."],
    "sort:asc": ["Sort the list from smallest to largest.", "Sort the numbers in increasing order."],
    "sort:desc": ["Sort from largest to smallest.", "Sort the numbers in decreasing order."],
    "reverse": ["Reverse the order of the elements.", "Reverse it."],
    "take": ["Keep only the first {k} elements.", "Take the first {k} items."],
    "skip": ["Drop the first {k} elements.", "Remove the first {k} items."],
    "unique": ["Keep unique values only.", "Remove the duplicates."],
    "zip": ["Zip the list with ys, {z}.", "Zip with ys by {z}."],
    "sum": ["Add up the elements.", "Sum everything that is left."],
    "product": ["Multiply the elements together.", "Take the product of what is left."],
    "max": ["Find the maximum, or 0 for an empty list.", "Take the max of what is left."],
    "min": ["Find the minimum, or 0 for an empty list.", "Take the min of what is left."],
    "count": ["Count how many elements remain.", "Count the elements left."],
}
# A vague wording: the verb is known but its operand is missing, so the step is unclear.
VAGUE = {"keep": "Keep the numbers that matter.", "drop": "Drop the ones we do not need.",
         "map": "Map each element as described.", "zip": "Zip with ys as described."}
# A code step's filler: up to two of sim_math's FILLER_OPENERS before it, and one of these tails after it. Not
# mathsim's tails: codesim counts every word beyond a step's canonical wording as filler, so a tail needs no "to" or
# "so" to end an operand, and may be one word; it only avoids the verbs codesim's step reader looks for.
_CODE_TAILS = {1: ["now", "here"], 2: ["to continue", "for now"], 3: ["before moving on", "for the output"],
               4: ["as the task says", "just as described here"]}


def _teacher_step(p: cs.Prim, teacher, rng: random.Random) -> str:
    if rng.random() < 1 - (teacher.by_number + teacher.by_handle) and p.kind in VAGUE:
        return VAGUE[p.kind]                             # as often as the teacher paraphrases a handle in mathsim
    if rng.random() < teacher.canonical_verb:
        return cs.canonical_step(p)
    text = rng.choice(ALTERNATIVES[cs._key(p)])
    return text.format(p=cs.PRED_TEXT.get(p.sub, "").format(k=p.k), k=p.k, z=cs.ZIP_TEXT.get(p.sub, ""))


def teacher_reply(problem: str, teacher, rng: random.Random) -> str:
    """One codesim strategy in a sampled style, with TeacherModel's rates (docs/world.md §5-6): a correct plan 95% of
    the time (else one step is a slip), the canonical wording 75% (else another wording, some of them not
    understood), a vague step as often as a paraphrase, 0-6 filler words a step, code leaked into the last step 10%
    of the time, a format error 5%."""
    task = cs.read_codesim(problem)
    steps = list(task.steps)
    if rng.random() >= teacher.correct_plan:
        j = rng.randrange(len(steps))
        steps[j] = slip(steps[j], rng) or _other(steps[j], rng)
    lines = []
    for j, p in enumerate(steps, 1):
        text = _teacher_step(p, teacher, rng)
        n = rng.randint(0, teacher.max_filler)           # filler words: up to 2 before the step, the rest after
        before = rng.choice([b for b in range(min(2, n) + 1) if n - b in (0, *_CODE_TAILS)])
        if before:
            text = " ".join(rng.sample(FILLER_OPENERS, before)).capitalize() + " " + text[0].lower() + text[1:]
        if n - before:
            text = text[:-1] + " " + rng.choice(_CODE_TAILS[n - before]) + "."
        lines.append(f"{j}. {text}")
    if rng.random() < teacher.answer_note:
        lines[-1] += f" In code: `return {cs.REDUCE_CODE.get(steps[-1].kind, 'sorted(result)')}`."
    return strategy_envelope(lines, rng, teacher.format_error)
