"""The simulated models of the offline world (docs/world.md §4-5), and how they answer a mathsim problem.

1. The capability model is one frozen dataclass per model: `CoreModel` (`CHEAP`, `LARGE`) and `TeacherModel`
   (`TEACHER`). A core's comprehension of a verb and the accuracy of a step it follows are CoreModel's methods, used
   by the codesim core (sim_code.py) too, with its own comprehension table; so are the filler openers a teacher puts
   before a step (FILLER_OPENERS). Every model's price is in core_client.PRICES, the client's table.
2. It acts on the message text only: mathsim.read_problem reads the problem, strategy_format.parse_strategy the
   strategy. A problem it cannot read raises mathsim.UnreadableProblem.
3. `make_plan` turns (problem, strategy, model) into per-step probabilities; the sampler draws from that plan and
   `exact_success` multiplies it out, so the simulation and the exact probability cannot drift apart. A step that
   goes wrong poisons every step that reads it, and a poisoned value is always written as a wrong number (never the
   value it should have had, and never the answer at the last step), so "wrong somewhere on the path to the answer"
   means "wrong answer" in both. At the first unclear step the core abandons the strategy and solves what the answer
   still needs alone, at its solo accuracy and with the distractor rule: an unclear step is never worth more than
   solving alone.
4. `core_reply` and `teacher_reply` write the reply to a mathsim request from a seeded rng; sim_core.complete picks
   the rng and the family of the request, and sim_core.py serves the replies over HTTP.
"""
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from mathsim import OPS, SYMBOLS, apply_op, read_problem, relation_templates
from strategy_format import CANONICAL, UNCLEAR_NOTE, VERBS, leaks, parse_strategy, strategy_envelope

# Comprehension of each verb by the cheap core (docs/world.md §4). A verb outside the lexicon is understood with 0.
COMPREHENSION = {
    "Add": 1.0, "Sum": 0.95, "Increase … by": 0.9, "Total": 0.8, "Put together": 0.6, "Combine": 0.55,
    "Subtract": 1.0, "Take away": 0.9, "Find the difference between": 0.85, "Remove": 0.85, "Reduce … by": 0.8,
    "Deduct": 0.7,
    "Multiply": 1.0, "Find the product of": 0.9, "Times": 0.9, "Repeat … for each": 0.7, "Scale": 0.6,
    "Divide": 1.0, "Find the quotient of": 0.85, "Split … into": 0.8, "Share … among": 0.75,
    "Find how many … fit in": 0.6,
}


@dataclass(frozen=True)
class CoreModel:
    name: str
    solo_accuracy: float          # per operation, solving alone
    ignore_distractor: float      # per distractor fact, solving alone
    step_accuracy: float          # per clear step of a strategy
    filler_penalty: float         # off step_accuracy per filler word in the step
    long_penalty: float           # off every step's accuracy per step beyond long_after
    min_comprehension: float      # floor on the comprehension of lexicon verbs
    long_after: int = 8
    leak_copy: float = 0.8        # chance to copy a leaked answer

    def comprehension(self, verb: str | None, table: dict = COMPREHENSION) -> float:
        """The chance the core understands a verb of `table` (mathsim's lexicon; sim_code passes codesim's): the
        table's value, at least min_comprehension; 0 for a verb outside the table."""
        return max(table[verb], self.min_comprehension) if verb in table else 0.0

    def followed_accuracy(self, filler_words: int, n_steps: int) -> float:
        """The chance that a followed step of an n_steps strategy has no slip: step_accuracy, less filler_penalty per
        filler word and long_penalty per step beyond long_after, clipped to [0, 1]."""
        long = self.long_penalty * max(0, n_steps - self.long_after)
        return min(1.0, max(0.0, self.step_accuracy - self.filler_penalty * filler_words - long))


@dataclass(frozen=True)
class TeacherModel:
    name: str = "sim-teacher"
    correct_plan: float = 0.95
    canonical_verb: float = 0.75  # otherwise uniform over the operation's other lexicon verbs
    by_number: float = 0.60       # a given quantity named by its number; then its exact handle; else a paraphrase
    by_handle: float = 0.30
    named_by_number: float = 0.05  # the same two when the request carries strategy_format.NAME_QUANTITIES
    named_by_handle: float = 0.85
    by_step_ref: float = 0.85     # an earlier result named "the result of step k"; else "it" / "that"
    max_filler: int = 6           # filler words a step, uniform 0..max_filler
    answer_note: float = 0.10     # "The answer is N." appended
    format_error: float = 0.05    # a missing tag or broken numbering
    echo: float = 0.7             # a step written with the echo verb of its relation sentence (ECHO_VERBS)


# The teacher's echo habit (docs/world.md §5): the lexicon verb that mirrors each relation template's own wording.
ECHO_VERBS = {"plus": "Add", "adding": "Add", "make_up": "Put together", "together_with": "Combine",
              "minus": "Subtract", "remain": "Take away", "removed": "Remove", "outnumber": "Find the difference between",
              "times": "Times", "each_of": "Repeat … for each", "fill_with": "Repeat … for each",
              "for_every": "Repeat … for each", "divided": "Divide", "packed": "Split … into",
              "splitting": "Split … into", "shared": "Share … among", "fit_into": "Find how many … fit in"}

CHEAP = CoreModel("sim-core", solo_accuracy=0.86, ignore_distractor=0.80, step_accuracy=0.985, filler_penalty=0.005,
                  long_penalty=0.02, min_comprehension=0.0)
LARGE = CoreModel("sim-core-large", solo_accuracy=0.95, ignore_distractor=0.95, step_accuracy=0.995,
                  filler_penalty=0.001, long_penalty=0.005, min_comprehension=0.95)
TEACHER = TeacherModel()
MODELS = {m.name: m for m in (CHEAP, LARGE, TEACHER)}


def core_model(model: str) -> CoreModel:
    """The simulated core of that name (ValueError for the teacher or an unknown name)."""
    if not isinstance(MODELS.get(model), CoreModel):
        raise ValueError(f"not a simulated core: {model!r} (cores: {CHEAP.name}, {LARGE.name})")
    return MODELS[model]


# ---------------------------------------------------------------------------------------------------------------
# The plan: what a core makes of a strategy, with the chance that each step comes out right.
@dataclass(frozen=True)
class StepPlan:
    op: str | None        # the verb's operation, None when the verb is unknown
    comprehension: float  # chance the verb is understood; otherwise a uniformly random operation
    accuracy: float       # chance of no slip
    args: tuple           # per operand: (earlier step index, None) or (None, value)
    values: tuple         # the value under each of OPS (None: undefined)
    ideal: Fraction | None  # what a faithful core writes for this step
    deps: tuple           # earlier steps this step reads

    def p_ok(self) -> float:
        """The chance this step's value comes out as `ideal`."""
        if self.ideal is None:
            return 0.0
        hits = sum(v == self.ideal for v in self.values) / len(OPS)
        right = self.values[OPS.index(self.op)] == self.ideal if self.op else False
        return self.accuracy * (self.comprehension * right + (1 - self.comprehension) * hits)


@dataclass(frozen=True)
class Plan:
    task: object          # mathsim.MathTask, read from the problem text
    steps: tuple | None   # the steps the core follows; None: no usable strategy, the core solves alone
    leak: bool
    abandoned: bool = False  # an unclear step came after `steps`: there the core solved the rest alone


_STOP = {"the", "a", "an", "of", "number", "per", "in", "on", "at", "for", "to", "each", "all", "those", "these",
         "that", "this", "amount", "total", "near"}
_PRONOUNS = {"it", "that", "this", "the result", "that result", "this result", "the previous result", "the last result"}


def _content_words(text: str) -> set:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP}


def _resolve(text: str, j: int, task) -> tuple | None:
    """One operand of step j (1-based): ("step", k) for an earlier result, ("value", v), or None when unclear."""
    t = text.strip().lower().rstrip(".")
    m = re.search(r"\bstep\s*(\d+)", t)
    if m:
        k = int(m.group(1))
        return ("step", k - 1) if 1 <= k < j else None
    if t in _PRONOUNS:
        return ("step", j - 2) if j > 1 else None
    m = re.search(r"\d[\d,]*(?:\.\d+)?", t)
    if m:                                     # a number in the problem resolves exactly; any other is taken as is
        return "value", Fraction(m.group(0).replace(",", ""))
    name = re.sub(r"^(the )?(number of )?(the )?", "", t)
    for q in task.quantities:
        if q.handle.lower() == name:
            return "value", Fraction(q.value)
    words = _content_words(t)
    overlaps = [len(words & _content_words(q.handle)) for q in task.quantities]
    best = max(overlaps, default=0)
    return ("value", Fraction(task.quantities[overlaps.index(best)].value)) if best else None


def _nodes(task) -> list:
    """(op, x, y, value) for each operation of the correct solution."""
    out = []
    for op in task.ops:
        x, y = (Fraction(task.quantities[r[1]].value) if r[0] == "q" else out[r[1]][3] for r in (op.a, op.b))
        out.append((op.op, x, y, apply_op(op.op, x, y)))
    return out


def _needed(nodes: list, produced: set, known: list, answer: int) -> Fraction:
    """The value the correct solution needs at a step whose verb the core does not know: the first operation of the
    solution not produced yet whose operands include the step's (then any not produced yet)."""
    todo = [n for n in nodes if n[3] not in produced]
    for strict in (True, False):
        for _, x, y, v in todo:
            if not strict or all(k in (x, y) for k in known):
                return v
    return Fraction(answer)


@lru_cache(maxsize=4096)
def _read(problem: str):
    return read_problem(problem)


@lru_cache(maxsize=4096)
def _templates(problem: str):
    return relation_templates(problem)


@lru_cache(maxsize=8192)
def make_plan(problem: str, strategy: str | None, model: str) -> Plan:
    """What the core `model` makes of the problem and strategy (cached: the recipe repeats requests a lot).
    The core follows the steps up to the first unclear one; there it abandons the strategy (docs/world.md §4)."""
    core, task = MODELS[model], _read(problem)
    parsed = parse_strategy(strategy) if strategy is not None else None
    if parsed is None or not parsed.valid:
        return Plan(task, None, False)        # an invalid strategy is ignored
    leak = leaks(strategy, problem, task.answer)
    nodes, produced, ideals, steps = _nodes(task), set(), [], []
    for j, step in enumerate(parsed.steps, 1):
        refs = [_resolve(t, j, task) for t in step.args]
        if None in refs:
            return Plan(task, tuple(steps), leak, abandoned=True)
        args = tuple((r[1], None) if r[0] == "step" else (None, r[1]) for r in refs)
        vals = [ideals[a[0]] if a[0] is not None else a[1] for a in args]
        values = tuple(None if None in vals else apply_op(op, *vals) for op in OPS)
        ideal = values[OPS.index(step.op)] if step.op else _needed(nodes, produced, vals, task.answer)
        deps = tuple(a[0] for a in args if a[0] is not None)
        steps.append(StepPlan(step.op, core.comprehension(step.verb) if step.op else 0.0,
                              core.followed_accuracy(step.filler_words, len(parsed.steps)), args, values, ideal, deps))
        ideals.append(ideal)
        produced.add(ideal)
    return Plan(task, tuple(steps), leak)


def _handover(plan: Plan) -> tuple:
    """Where an abandoned strategy leaves the core: ({operation of the solution: the followed step that produced its
    value}, [operations the answer still needs, to solve alone, in order], {followed steps whose values they read})."""
    nodes, ops = _nodes(plan.task), plan.task.ops
    source = {}
    for k, node in enumerate(nodes):
        j = next((j for j, s in enumerate(plan.steps) if s.ideal == node[3]), None)
        if j is not None:
            source[k] = j
    todo, used, stack = set(), set(), [len(nodes) - 1]
    while stack:                              # walk back from the answer, stopping at values already produced
        k = stack.pop()
        if k in source:
            used.add(source[k])
        elif k not in todo:
            todo.add(k)
            stack.extend(r[1] for r in (ops[k].a, ops[k].b) if r[0] == "s")
    return source, sorted(todo), used


def _on_path(steps: tuple, ends) -> set:
    """The steps the values of steps `ends` depend on, themselves included."""
    seen, stack = set(), list(ends)
    while stack:
        j = stack.pop()
        if j not in seen:
            seen.add(j)
            stack.extend(steps[j].deps)
    return seen


def exact_success(problem: str, strategy: str | None, model: str = "sim-core") -> float:
    """The exact probability that the core answers correctly (for analysis and tests, never for training)."""
    core = core_model(model)
    plan = make_plan(problem, strategy, model)
    task = plan.task
    alone = core.ignore_distractor ** len(task.distractors)
    if plan.steps is None:
        return core.solo_accuracy ** len(task.ops) * alone
    if plan.abandoned:
        _, todo, used = _handover(plan)
        chain = math.prod(plan.steps[j].p_ok() for j in _on_path(plan.steps, used)) * \
            core.solo_accuracy ** len(todo) * alone
    elif plan.steps[-1].ideal == task.answer:
        chain = math.prod(plan.steps[j].p_ok() for j in _on_path(plan.steps, [len(plan.steps) - 1]))
    else:
        chain = 0.0
    copy = core.leak_copy if plan.leak else 0.0
    return copy + (1 - copy) * chain


# ---------------------------------------------------------------------------------------------------------------
# The core's replies, sampled from the plan.
def _fmt(v) -> str:
    if v is None:
        return "undefined"
    return str(int(v)) if v.denominator == 1 else f"{float(v):.2f}"


def _wrong(rng: random.Random, guess, avoid: set) -> Fraction:
    """A wrong whole number: the miscalculated guess if it is one, else a near miss of what was avoided."""
    if guess is not None and guess.denominator == 1 and guess >= 0 and guess not in avoid:
        return guess
    base = next((int(v) for v in avoid if v is not None and v.denominator == 1 and v >= 0), 10)
    while True:
        v = Fraction(max(0, base + rng.choice([-1, 1]) * rng.randint(1, max(2, base // 4))))
        if v not in avoid:
            return v


def _guided_reply(plan: Plan, core: CoreModel, rng: random.Random) -> str:
    task = plan.task
    if plan.leak and rng.random() < core.leak_copy:
        return f"The strategy already gives the answer.\n#### {task.answer}"
    shown, bad, lines = [], [], []
    for j, s in enumerate(plan.steps):
        avoid = {s.ideal} | ({Fraction(task.answer)} if j == len(plan.steps) - 1 else set())
        op = s.op if rng.random() < s.comprehension else rng.choice(OPS)
        slip = rng.random() >= s.accuracy
        ok = not slip and s.ideal is not None and s.values[OPS.index(op)] == s.ideal
        x, y = (shown[k] if k is not None else v for k, v in s.args)
        is_bad = not ok or any(bad[k] for k in s.deps)
        guess = None if slip else apply_op(op, x, y) if None not in (x, y) else None
        value = _wrong(rng, guess, avoid) if is_bad else s.ideal
        lines.append(f"Step {j + 1}: {_fmt(x)} {SYMBOLS[op]} {_fmt(y)} = {_fmt(value)}")
        shown.append(value)
        bad.append(is_bad)
    if not plan.abandoned:
        return "\n".join(lines + [f"#### {_fmt(shown[-1])}"])
    source, todo, _ = _handover(plan)
    known = {k: (shown[j], bad[j]) for k, j in source.items()}
    rest, answer = _solve_alone(task, core, rng, known, todo, len(lines))
    lines.append(f"Step {len(lines) + 1} {UNCLEAR_NOTE}")
    return "\n".join(lines + rest + [f"#### {_fmt(answer)}"])


def _solo_reply(task, core: CoreModel, rng: random.Random) -> str:
    lines, answer = _solve_alone(task, core, rng, {}, list(range(len(task.ops))), 0)
    return "\n".join(lines + [f"#### {_fmt(answer)}"])


def _solve_alone(task, core: CoreModel, rng: random.Random, known: dict, todo: list, first: int) -> tuple:
    """Solving the operations `todo` of the solution alone, reading `known` ({operation: (value, wrong?)}, from steps
    already followed) for the others: one slip per operation with 1 - solo accuracy, and a distractor that is not
    ignored gets mixed into a random one of them (into the answer when none is left); either makes the answer wrong.
    The core also explains more: a longer chain of thought, about three times the tokens of a guided step.
    Returns (the lines written, numbered after `first` steps; the answer)."""
    nodes, root = _nodes(task), len(task.ops) - 1
    slips = {k: rng.random() >= core.solo_accuracy for k in todo}
    mixed = {}
    for d in task.distractors:
        if rng.random() >= core.ignore_distractor:
            mixed.setdefault(todo[rng.randrange(len(todo))] if todo else root, []).append(task.quantities[d])
    lines = [f"The {task.quantities[d].handle} are not needed." for d in task.distractors
             if all(task.quantities[d] not in m for m in mixed.values())]
    shown, number = dict(known), first
    for k in todo:
        op, names, xs, bads = task.ops[k], [], [], []
        for r in (op.a, op.b):
            q = task.quantities[r[1]] if r[0] == "q" else None
            names.append(q.handle if q else f"result of step {r[1] + 1}")
            xs.append(Fraction(q.value) if q else shown[r[1]][0])
            bads.append(False if q else shown[r[1]][1])
        guess, extra = apply_op(op.op, *xs), ""
        for q in mixed.get(k, []):
            guess, extra = (None if guess is None else guess + q.value), extra + f", plus {q.handle}"
        is_bad = slips[k] or k in mixed or any(bads)
        avoid = {nodes[k][3]} | ({Fraction(task.answer)} if k == root else set())
        value = _wrong(rng, None if slips[k] else guess, avoid) if is_bad else nodes[k][3]
        number += 1
        lines.append(f"Step {number}: {names[0]}, {names[1]}{extra}: "
                     f"{_fmt(xs[0])} {SYMBOLS[op.op]} {_fmt(xs[1])} = {_fmt(value)}")
        shown[k] = (value, is_bad)
    value, is_bad = shown[root]
    if root not in todo and root in mixed:     # everything was followed, yet a distractor slips into the answer
        q = mixed[root][0]
        wrong = _wrong(rng, value + q.value, {nodes[root][3]})
        lines.append(f"Step {number + 1}: {_fmt(value)} plus {q.handle}: "
                     f"{_fmt(value)} + {q.value} = {_fmt(wrong)}")
        value = wrong
    return lines, value


def core_reply(problem: str, strategy: str | None, core: CoreModel, rng: random.Random) -> str:
    """The core's reply to a mathsim problem: it follows the strategy as make_plan says, or solves alone."""
    plan = make_plan(problem, strategy, core.name)
    if plan.steps is None:
        return _solo_reply(plan.task, core, rng)
    return _guided_reply(plan, core, rng)


def echo_share(problem: str, strategy: str) -> tuple:
    """(steps written with an echo verb, steps that could be): a step counts when the problem defines a result of
    its operation with a sentence whose echo verb is not the canonical one. For --selfcheck and tests."""
    parsed, task = parse_strategy(strategy), _read(problem)
    echo = {}
    for op, template in zip(task.ops, _templates(problem)):
        if ECHO_VERBS[template] != CANONICAL[op.op].key:
            echo.setdefault(op.op, set()).add(ECHO_VERBS[template])
    steps = [s for s in parsed.steps if s.op in echo] if parsed.valid else []
    return sum(s.verb in echo[s.op] for s in steps), len(steps)


# ---------------------------------------------------------------------------------------------------------------
# The teacher's strategies.
# Filler a teacher puts around a step: up to two openers before it (FILLER_OPENERS, sim_code's teacher uses them too)
# and a tail after it. A mathsim tail starts with "to" or "so", where the grammar ends a step's second operand
# (strategy_format's _TAIL), so the tail is read as filler and never as part of an operand; codesim's tails differ.
FILLER_OPENERS = ["Now", "Next", "Then", "Carefully", "Simply", "First"]
_MATH_TAILS = {2: ["to start", "to continue"], 3: ["to get it", "to find this"],
               4: ["to get the total", "so we know more"], 5: ["to find the next amount", "to see what that makes"]}
_VAGUE = ["the other figure", "the given count", "the earlier quantity"]   # share no word with any handle


def teacher_reply(problem: str, teacher: TeacherModel, rng: random.Random, name_quantities: bool = False) -> str:
    """The teacher's strategy for a mathsim problem, in a sampled style (docs/world.md §5); name_quantities: the
    request carried the naming instruction, which changes how given quantities are named and nothing else.
    With teacher.echo > 0 a step's verb first echoes its relation sentence (ECHO_VERBS) with that chance; at 0 no
    draw is made for it, so the replies are those of the teacher before the habit, draw for draw."""
    task, templates = _read(problem), _templates(problem)
    by_number, by_handle = ((teacher.named_by_number, teacher.named_by_handle) if name_quantities
                            else (teacher.by_number, teacher.by_handle))
    order, done = [], set()
    while len(order) < len(task.ops):          # a random topological order
        ready = [i for i, op in enumerate(task.ops) if i not in done
                 and all(r[0] == "q" or r[1] in done for r in (op.a, op.b))]
        order.append(rng.choice(ready))
        done.add(order[-1])
    position = {i: j for j, i in enumerate(order, 1)}
    broken = rng.randrange(len(order)) if rng.random() >= teacher.correct_plan else -1

    def name(ref):
        if ref[0] == "s":
            return (f"the result of step {position[ref[1]]}" if rng.random() < teacher.by_step_ref
                    else rng.choice(["it", "that"]))
        q, u = task.quantities[ref[1]], rng.random()
        if u < by_number:
            return str(q.value)
        if u < by_number + by_handle:
            return "the " + q.handle
        words = [w for w in q.handle.split() if w.lower() not in _STOP]
        if rng.random() < 0.2 or not words:
            return rng.choice(_VAGUE)
        keep = sorted(rng.sample(range(len(words)), rng.randint(1, max(1, len(words) - 1))))
        return "the " + " ".join(words[i] for i in keep)

    lines = []
    for j, i in enumerate(order, 1):
        op = task.ops[i]
        kind = rng.choice([o for o in OPS if o != op.op]) if j - 1 == broken else op.op
        if j - 1 != broken and teacher.echo and rng.random() < teacher.echo:
            key = ECHO_VERBS[templates[i]]    # the canonical key keeps its one canonical form
            form = CANONICAL[kind] if key == CANONICAL[kind].key else rng.choice(
                [f for f in VERBS[kind] if f.key == key])
        elif rng.random() < teacher.canonical_verb:
            form = CANONICAL[kind]
        else:
            key = rng.choice(sorted({f.key for f in VERBS[kind]} - {CANONICAL[kind].key}))
            form = rng.choice([f for f in VERBS[kind] if f.key == key])
        x, y = name(op.a), name(op.b)
        text = form.pattern.format(**(dict(a=y, b=x) if form.swap else dict(a=x, b=y)))
        n = rng.randint(0, teacher.max_filler)
        p, s = rng.choice([(p, n - p) for p in range(3) if n - p in (0, 2, 3, 4, 5)])
        if p:
            text = " ".join(rng.sample(FILLER_OPENERS, p)).capitalize() + " " + text[0].lower() + text[1:]
        if s:
            text += " " + rng.choice(_MATH_TAILS[s])
        lines.append(f"{j}. {text}.")
    if rng.random() < teacher.answer_note:
        lines[-1] += f" The answer is {task.answer}."
    return strategy_envelope(lines, rng, teacher.format_error)

