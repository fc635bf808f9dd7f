"""The offline stand-in for black-box LLMs: a cheap core, a large core and a teacher behind a real HTTP API.

1. A standard-library threaded HTTP server speaks OpenAI chat completions (POST /v1/chat/completions, GET /v1/models)
   and Anthropic messages (POST /v1/messages), errors in each API's own shape. --latency-ms delays every request and
   --fail-rate answers a share of them with 429 (retry-after-ms 50), 500, 529 or a cut connection, so a client's
   concurrency and retries are tested for real. `openai_body` and `send_json` write its replies, and the scripted
   servers of the tests and benchmarks answer with them too, so every fake speaks the same OpenAI shape.
2. It acts on the message text only: tasks.read_problem reads the problem, tasks.parse_strategy the strategy. A
   codesim problem (code_tasks.is_codesim_problem) goes to sim_code.py instead: the core replies with a real
   Python function (graded later by running it, never here), the teacher with a codesim strategy.
3. The capability model of DESIGN 4.3-4.4 is one dataclass per model. `make_plan` turns (problem, strategy, model)
   into per-step probabilities; the sampler draws from that plan and `exact_success` multiplies it out, so the
   simulation and the exact probability cannot drift apart. A step that goes wrong poisons every step that reads
   it, and a poisoned value is always written as a wrong number (never the value it should have had, and never the
   answer at the last step), so "wrong somewhere on the path to the answer" means "wrong answer" in both. At the
   first unclear step the core abandons the strategy and solves what the answer still needs alone, at its solo
   accuracy and with the distractor rule: an unclear step is never worth more than solving alone.
4. Randomness is a pure function of (model, messages, temperature, seed, choice index): the same request gets the
   same reply, another seed draws again. At temperature 0 the seed and choice index are ignored (greedy decoding).
5. `--selfcheck` runs the real prompt path over HTTP on seeded test tasks and prints one JSON line.
"""
import argparse
import hashlib
import json
import math
import random
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import code_tasks
import sim_code
from tasks import (CANONICAL, OPS, SYMBOLS, VERBS, UnreadableProblem, apply_op, asks_to_name_quantities,
                   extract_strategy, leaks, parse_core_request, parse_strategy, parse_teacher_request, read_problem,
                   strategy_envelope, UNCLEAR_NOTE)

# Comprehension of each verb by the cheap core (DESIGN 4.3). A verb outside the lexicon is understood with 0.
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
    price_in: float               # $ per million tokens
    price_out: float
    long_after: int = 8
    leak_copy: float = 0.8        # chance to copy a leaked answer

    def comprehension(self, verb: str) -> float:
        return max(COMPREHENSION[verb], self.min_comprehension) if verb in COMPREHENSION else 0.0


@dataclass(frozen=True)
class TeacherModel:
    name: str = "sim-teacher"
    correct_plan: float = 0.95
    canonical_verb: float = 0.75  # otherwise uniform over the operation's other lexicon verbs
    by_number: float = 0.60       # a given quantity named by its number; then its exact handle; else a paraphrase
    by_handle: float = 0.30
    named_by_number: float = 0.05  # the same two when the request carries tasks.NAME_QUANTITIES
    named_by_handle: float = 0.85
    by_step_ref: float = 0.85     # an earlier result named "the result of step k"; else "it" / "that"
    max_filler: int = 6           # filler words a step, uniform 0..max_filler
    answer_note: float = 0.10     # "The answer is N." appended
    format_error: float = 0.05    # a missing tag or broken numbering
    price_in: float = 3.0
    price_out: float = 15.0


CHEAP = CoreModel("sim-core", solo_accuracy=0.86, ignore_distractor=0.80, step_accuracy=0.985, filler_penalty=0.005,
                  long_penalty=0.02, min_comprehension=0.0, price_in=0.80, price_out=4.0)
LARGE = CoreModel("sim-core-large", solo_accuracy=0.95, ignore_distractor=0.95, step_accuracy=0.995,
                  filler_penalty=0.001, long_penalty=0.005, min_comprehension=0.95, price_in=3.0, price_out=15.0)
TEACHER = TeacherModel()
MODELS = {m.name: m for m in (CHEAP, LARGE, TEACHER)}


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
    task: object          # tasks.MathTask, read from the problem text
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


@lru_cache(maxsize=8192)
def make_plan(problem: str, strategy: str | None, model: str) -> Plan:
    """What the core `model` makes of the problem and strategy (cached: the recipe repeats requests a lot).
    The core follows the steps up to the first unclear one; there it abandons the strategy (DESIGN 4.3)."""
    core, task = MODELS[model], _read(problem)
    parsed = parse_strategy(strategy) if strategy is not None else None
    if parsed is None or not parsed.valid:
        return Plan(task, None, False)        # an invalid strategy is ignored
    leak = leaks(strategy, problem, task.answer)
    nodes, produced, ideals, steps = _nodes(task), set(), [], []
    long = core.long_penalty * max(0, len(parsed.steps) - core.long_after)
    for j, step in enumerate(parsed.steps, 1):
        refs = [_resolve(t, j, task) for t in step.args]
        if None in refs:
            return Plan(task, tuple(steps), leak, abandoned=True)
        args = tuple((r[1], None) if r[0] == "step" else (None, r[1]) for r in refs)
        vals = [ideals[a[0]] if a[0] is not None else a[1] for a in args]
        values = tuple(None if None in vals else apply_op(op, *vals) for op in OPS)
        ideal = values[OPS.index(step.op)] if step.op else _needed(nodes, produced, vals, task.answer)
        accuracy = core.step_accuracy - core.filler_penalty * step.filler_words - long
        deps = tuple(a[0] for a in args if a[0] is not None)
        steps.append(StepPlan(step.op, core.comprehension(step.verb) if step.op else 0.0,
                              min(1.0, max(0.0, accuracy)), args, values, ideal, deps))
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


def _core(model: str) -> CoreModel:
    if not isinstance(MODELS.get(model), CoreModel):
        raise ValueError(f"not a simulated core: {model!r} (cores: {CHEAP.name}, {LARGE.name})")
    return MODELS[model]


def exact_success(problem: str, strategy: str | None, model: str = "sim-core") -> float:
    """The exact probability that the core answers correctly (for analysis and tests, never for training)."""
    core = _core(model)
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
# Sampling replies.
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


_PREFIX = ["Now", "Next", "Then", "Carefully", "Simply", "First"]
_SUFFIX = {2: ["to start", "to continue"], 3: ["to get it", "to find this"], 4: ["to get the total", "so we know more"],
           5: ["to find the next amount", "to see what that makes"]}
_VAGUE = ["the other figure", "the given count", "the earlier quantity"]   # share no word with any handle


def _teacher_reply(task, teacher: TeacherModel, rng: random.Random, name_quantities: bool = False) -> str:
    """One strategy in a sampled style (DESIGN 4.4); name_quantities: the request carried the naming instruction,
    which changes how given quantities are named and nothing else."""
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
        if rng.random() < teacher.canonical_verb:
            form = CANONICAL[kind]
        else:
            key = rng.choice(sorted({f.key for f in VERBS[kind]} - {CANONICAL[kind].key}))
            form = rng.choice([f for f in VERBS[kind] if f.key == key])
        x, y = name(op.a), name(op.b)
        text = form.pattern.format(**(dict(a=y, b=x) if form.swap else dict(a=x, b=y)))
        n = rng.randint(0, teacher.max_filler)
        p, s = rng.choice([(p, n - p) for p in range(3) if n - p in (0, 2, 3, 4, 5)])
        if p:
            text = " ".join(rng.sample(_PREFIX, p)).capitalize() + " " + text[0].lower() + text[1:]
        if s:
            text += " " + rng.choice(_SUFFIX[s])
        lines.append(f"{j}. {text}.")
    if rng.random() < teacher.answer_note:
        lines[-1] += f" The answer is {task.answer}."
    return strategy_envelope(lines, rng, teacher.format_error)


def _draw_seed(model: str, messages: list, temperature: float, seed, index: int) -> int:
    if temperature == 0:
        seed, index = None, 0                  # greedy decoding: one answer whatever the seed
    key = json.dumps([model, messages, float(temperature), seed, index], ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def complete(model: str, messages: list, temperature: float = 1.0, seed=None, index: int = 0) -> str:
    """The reply text of `model` to OpenAI-style messages (raises ValueError / UnreadableProblem on bad input)."""
    rng = random.Random(_draw_seed(model, messages, temperature, seed, index))
    if model == TEACHER.name:
        problem = parse_teacher_request(messages)
        if code_tasks.is_codesim_problem(problem):
            return sim_code.teacher_reply(problem, TEACHER, rng)
        return _teacher_reply(_read(problem), TEACHER, rng, asks_to_name_quantities(messages))
    problem, strategy = parse_core_request(messages)
    if code_tasks.is_codesim_problem(problem):      # codesim (DESIGN 4.5): the core writes a real function
        return sim_code.core_reply(problem, strategy, _core(model), rng)
    plan = make_plan(problem, strategy, model)
    if plan.steps is None:
        return _solo_reply(plan.task, MODELS[model], rng)
    return _guided_reply(plan, MODELS[model], rng)


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------------------------------------------------------
# HTTP.
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_ERROR_TYPES = {400: ("invalid_request_error", "invalid_request_error"),
                413: ("invalid_request_error", "request_too_large"), 404: ("invalid_request_error",
                "not_found_error"), 429: ("rate_limit_error", "rate_limit_error"), 500: ("server_error", "api_error"),
                529: ("server_error", "overloaded_error")}


def _text(content, where: str) -> str:
    """Message content as text: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    raise ApiError(400, "invalid_content", f"{where} must be a string or a list of text blocks")


def _number(body: dict, key: str, default, low, high, integer=False):
    v = body.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not low <= v <= high:
        raise ApiError(400, "invalid_value", f"'{key}' must be {'an integer' if integer else 'a number'} "
                                             f"between {low} and {high}")
    return v


def _respond(api: str, raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):     # RecursionError: nested too deep to be a request
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    for key in ("model", "messages") + (("max_tokens",) if api == "anthropic" else ()):
        if key not in body:
            raise ApiError(400, "missing_field", f"missing required field '{key}'")
    model, raw_messages = body["model"], body["messages"]
    if not isinstance(model, str):
        raise ApiError(400, "invalid_value", "'model' must be a string")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ApiError(400, "invalid_value", "'messages' must be a non-empty list")
    messages = [{"role": "system", "content": _text(body["system"], "'system'")}] if body.get("system") else []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ApiError(400, "missing_field", f"messages[{i}] needs a 'role' and a 'content'")
        messages.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content")})
    temperature = _number(body, "temperature", 1.0, 0, 2)
    seed = _number(body, "seed", None, -2 ** 63, 2 ** 64, integer=True)
    n = _number(body, "n", 1, 1, 128, integer=True) if api == "openai" else 1
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": limit}, "max_tokens", None, 1, 10 ** 7, integer=True)
    if model not in MODELS:
        raise ApiError(404, "model_not_found", f"model {model!r} does not exist; this server has "
                                               f"{', '.join(MODELS)}")
    texts = []
    try:
        for i in range(n):
            texts.append(complete(model, messages, temperature, seed, i))
    except UnreadableProblem as e:
        raise ApiError(400, "unreadable_problem", f"cannot read the problem: {e}") from None
    except ValueError as e:
        raise ApiError(400, "invalid_prompt", f"cannot find the problem in the messages: {e}") from None
    cut = [max_tokens is not None and tokens(t) > max_tokens for t in texts]
    texts = [t[:max_tokens * 4] if c else t for t, c in zip(texts, cut)]
    prompt_tokens, out_tokens = tokens("".join(m["content"] for m in messages)), sum(tokens(t) for t in texts)
    ident = hashlib.blake2b(raw, digest_size=12).hexdigest()
    if api == "anthropic":
        return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": texts[0]}], "stop_reason": "max_tokens" if cut[0] else "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": out_tokens}}
    return openai_body(model, texts, prompt_tokens, out_tokens, cut, ident)


def openai_body(model: str, texts: list, prompt_tokens: int, completion_tokens: int, cut: list | None = None,
                ident: str = "0") -> dict:
    """An OpenAI chat.completion body: one choice per text, finish_reason "length" where cut says it was cut off."""
    cut = cut or [False] * len(texts)
    return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": "length" if c else "stop"} for i, (t, c) in enumerate(zip(texts, cut))],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def send_json(handler: BaseHTTPRequestHandler, status: int, payload, headers: dict | None = None):
    """Write one reply on a request handler: payload is a dict sent as JSON, or bytes sent as they are."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


FAILURES = ("429", "500", "529", "cut")
MAX_BODY_BYTES = 4 << 20          # a chat request is kilobytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"             # keep-alive, as real APIs do
    server_version = "sim_core/1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK add ~40 ms per reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    timeout = 30      # seconds a connection may stall (a short body, an idle keep-alive) before it is dropped

    def log_message(self, *args):
        pass

    def _error(self, api: str, status: int, code: str, message: str, headers: dict | None = None):
        kind = _ERROR_TYPES[status][api == "anthropic"]
        payload = ({"type": "error", "error": {"type": kind, "message": message}} if api == "anthropic"
                   else {"error": {"message": message, "type": kind, "code": code}})
        send_json(self, status, payload, headers)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if not path.endswith("/models"):
            return self._error("openai", 404, "not_found", f"no route GET {self.path}")
        send_json(self, 200, {"object": "list", "has_more": False, "data": [
            {"id": m, "object": "model", "type": "model", "display_name": m, "created": 0, "owned_by": "sim_core"}
            for m in MODELS]})

    def do_POST(self):
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self.close_connection = True          # the body is not read: the connection cannot be reused
            return self._error("openai", 413, "request_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length)) if length.isdigit() else b""
        path = self.path.split("?")[0].rstrip("/")
        api = "anthropic" if path.endswith("/messages") else "openai" if path.endswith("/chat/completions") else None
        if api is None:
            return self._error("openai", 404, "not_found", f"no route POST {self.path}")
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        failure = self.server.draw_failure()
        if failure == "cut":
            self.close_connection = True      # hang up without a reply
        elif failure == "429":
            self._error(api, 429, "rate_limit_exceeded", "Rate limit reached (simulated); retry after 50 ms.",
                        {"retry-after-ms": "50", "Retry-After": "0"})
        elif failure:
            self._error(api, int(failure), "server_error" if failure == "500" else "overloaded",
                        "Internal error (simulated)." if failure == "500" else "Overloaded (simulated).")
        else:
            try:
                send_json(self, 200, _respond(api, raw))
            except ApiError as e:
                self._error(api, e.status, e.code, e.message)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128                  # a burst of concurrent connects must not be dropped

    def __init__(self, address, latency_ms: float = 0, fail_rate: float = 0.0, seed: int = 0):
        if not 0 <= fail_rate <= 1 or latency_ms < 0:
            raise ValueError("fail_rate must be in [0, 1] and latency_ms >= 0")
        super().__init__(address, _Handler)
        self.latency_s, self.fail_rate = latency_ms / 1000, fail_rate
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def draw_failure(self) -> str | None:
        """Random per request (not a function of the body), so a retried request can succeed."""
        if self.fail_rate <= 0:
            return None
        with self._lock:
            return self._rng.choice(FAILURES) if self._rng.random() < self.fail_rate else None

    def shutdown(self):
        """Stop serving and close the listening socket."""
        super().shutdown()
        self.server_close()


def start_server(host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0, fail_rate: float = 0.0,
                 seed: int = 0) -> tuple:
    """Serve in a daemon thread; returns (server, "http://HOST:PORT"). Paths are matched by their ending, so both
    that URL and URL + "/v1" work as an OpenAI or an Anthropic base URL."""
    server = SimServer((host, port), latency_ms, fail_rate, seed)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


# ---------------------------------------------------------------------------------------------------------------
def selfcheck(n: int, seed: int = 0, level: int = 2, family: str = "mathsim", samples: int = 32) -> dict:
    """The real prompt path over HTTP: each configuration's accuracy (graded as the recipe grades: for codesim, by
    running the code), mean tokens and dollars per task, and the model's own success probability beside it: mathsim's
    exact_success; for codesim, p_bug_free ("exact") and the pass rate of `samples` functions sampled per task and
    run in the sandbox ("sampled")."""
    import requests
    import families                   # the recipe's grading, so the self-check measures what the table will
    rules = families.get(family)
    server, url = start_server()
    local = threading.local()
    test = rules.generate(n, seed, "test", level)

    def call(model, messages):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = local.session.post(url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": messages, "temperature": 1.0, "seed": seed, "max_tokens": 512})
        r.raise_for_status()
        out = r.json()
        price = MODELS[model]
        usage = out["usage"]
        dollars = (usage["prompt_tokens"] * price.price_in + usage["completion_tokens"] * price.price_out) / 1e6
        return out["choices"][0]["message"]["content"], usage["prompt_tokens"], usage["completion_tokens"], dollars

    def run(model, strategies):
        return list(pool.map(lambda ts: call(model, rules.core_messages(ts[0].problem, ts[1])), zip(test, strategies)))

    def summary(replies, strategies, model, extra=None):
        extra = extra or [(0, 0, 0.0)] * n
        out = {"accuracy": round(sum(rules.grade(test, [r[0] for r in replies])) / n, 4)}
        if family == "codesim":
            items = [(t.problem, s) for t, s in zip(test, strategies)]
            out["exact"] = round(sum(sim_code.p_bug_free(p, s, _core(model)) for p, s in items) / n, 4)
            out["sampled"] = round(sum(sim_code.success_rates(items, _core(model), n=samples, seed=seed)) / n, 4)
        else:
            out["exact"] = round(sum(exact_success(t.problem, s, model) for t, s in zip(test, strategies)) / n, 4)
        return dict(out, input_tokens=round(sum(r[1] + e[0] for r, e in zip(replies, extra)) / n, 1),
                    output_tokens=round(sum(r[2] + e[1] for r, e in zip(replies, extra)) / n, 1),
                    dollars=round(sum(r[3] + e[2] for r, e in zip(replies, extra)) / n, 7))

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        alone, canonical = [None] * n, [rules.canonical_strategy(t) for t in test]
        cheap, large, with_canonical = run(CHEAP.name, alone), run(LARGE.name, alone), run(CHEAP.name, canonical)
        taught = list(pool.map(lambda t: call(TEACHER.name, rules.teacher_messages(t.problem)), test))
        strategies = [extract_strategy(r[0]) or r[0].strip() for r in taught]
        with_teacher = run(CHEAP.name, strategies)
    seconds = time.perf_counter() - start
    server.shutdown()
    teacher = summary(with_teacher, strategies, CHEAP.name, [(r[1], r[2], r[3]) for r in taught])
    teacher["teacher_dollars"] = round(sum(r[3] for r in taught) / n, 7)
    teacher["valid"] = round(sum(rules.parse_strategy(s).valid for s in strategies) / n, 4)
    return {"family": family, "n": n, "seed": seed, "level": level, "cheap_alone": summary(cheap, alone, CHEAP.name),
            "large_alone": summary(large, alone, LARGE.name),
            "cheap_canonical": summary(with_canonical, canonical, CHEAP.name),
            "cheap_teacher": teacher, "requests_per_s": round(5 * n / seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Simulated cheap core, large core and teacher behind an "
                                                 "OpenAI- and Anthropic-shaped HTTP API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added delay per request")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests that fail (429/500/529/cut)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure draws; of the tasks in --selfcheck")
    parser.add_argument("--selfcheck", action="store_true", help="run the prompt path over HTTP, print one JSON line")
    parser.add_argument("--n", type=int, default=500, help="tasks for --selfcheck")
    parser.add_argument("--level", type=int, default=2, choices=[1, 2], help="mathsim level for --selfcheck")
    parser.add_argument("--family", default="mathsim", choices=["mathsim", "codesim"], help="tasks for --selfcheck")
    args = parser.parse_args(argv)
    if not 0 <= args.fail_rate <= 1:
        parser.error(f"--fail-rate must be between 0 and 1, got {args.fail_rate}")
    if args.latency_ms < 0:
        parser.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if args.selfcheck:
        if args.n < 1:
            parser.error(f"--n must be >= 1, got {args.n}")
        print(json.dumps(selfcheck(args.n, args.seed, args.level, args.family)), flush=True)
        return 0
    try:
        server = SimServer((args.host, args.port), args.latency_ms, args.fail_rate, args.seed)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
