"""Task families: `mathsim` (word problems, their reader, the strategy grammar and the prompts) and `gsm8k`.

1. `generate_tasks` writes seeded GSM8K-style word problems: operations forming a tree-shaped DAG (an operation may
   combine two earlier results), distractor facts, integer answers, `#### N` solutions. Every given number has a
   handle, a short noun phrase from its sentence, unique within the problem. Two levels (DESIGN 4.1): level 2 has
   2-6 operations, 0-2 distractors and facts in shuffled order; level 1, the easy form for small compute, has 1-3
   operations, 0-1 distractor and facts in computation order (what an operation needs is stated before it).
2. The text is invertible: `read_problem` recovers quantities, handles, operations and answer from the text alone,
   so the simulated core (sim_core.py) understands requests without hidden metadata.
3. Splits: `train`, `val` and `test` are drawn from one distribution (other seeds), as GSM8K's are. `ood` also uses
   held-out phrasings that the other splits never show (templates marked `ood_only` below: leaf templates
   `list_shows` and `packs_each`, relation templates `adding`, `outnumber`, `for_every`, `splitting`, `fit_into`,
   question `work_out`, intro `keeps_track`; the names and scenes of OOD_NAMES and OOD_SCENES).
4. `parse_strategy` reads the `<strategy>` format of DESIGN 4.2 with the verb grammar `VERBS`; it returns the steps or
   the reason the strategy is invalid. `leaks` and `extract_answer` grade, and the prompts for the guide, the core and
   the teacher live here only, so the real and the simulated path see the same text.
5. Task family `gsm8k`: the real benchmark read from its own files (`load_gsm8k`), with its own strategy rule, answer
   reader and prompts. families.py gathers each family's rules (codesim's are in code_tasks.py).
"""
import argparse
import json
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

OPS = ("add", "sub", "mul", "div")
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
SPLITS = ("train", "val", "test", "ood")   # train / val / test i.i.d.; ood: held-out phrasings
LEVELS = {1: (1, 3, 1), 2: (2, 6, 2)}         # level: (fewest operations, most operations, most distractors)


class UnreadableProblem(ValueError):
    """The text is not a mathsim problem the reader can understand exactly."""


@dataclass(frozen=True)
class Quantity:
    value: int
    handle: str


@dataclass(frozen=True)
class Op:
    op: str          # add | sub | mul | div, value = a op b
    a: tuple         # ("q", i): given quantity i; ("s", k): result of op k (k earlier)
    b: tuple


@dataclass(frozen=True)
class MathTask:
    family: ClassVar[str] = "mathsim"
    id: str
    split: str
    problem: str
    answer: int
    solution: str
    quantities: tuple
    ops: tuple
    distractors: tuple

    def to_json(self) -> dict:
        return {"id": self.id, "split": self.split, "problem": self.problem, "answer": self.answer,
                "solution": self.solution, "quantities": [[q.value, q.handle] for q in self.quantities],
                "ops": [[o.op, list(o.a), list(o.b)] for o in self.ops], "distractors": list(self.distractors)}

    @staticmethod
    def from_json(d: dict) -> "MathTask":
        try:
            task = MathTask(d["id"], d["split"], d["problem"], int(d["answer"]), d["solution"],
                            tuple(Quantity(int(v), h) for v, h in d["quantities"]),
                            tuple(Op(o, (a[0], int(a[1])), (b[0], int(b[1]))) for o, a, b in d["ops"]),
                            tuple(int(i) for i in d["distractors"]))
            if not all(isinstance(x, str) for x in (task.id, task.split, task.problem, task.solution)):
                raise TypeError("id, split, problem and solution must be strings")
            for k, op in enumerate(task.ops):   # every reference names a given quantity or an earlier step
                if op.op not in OPS:
                    raise ValueError(f"op {k}: unknown operation {op.op!r}")
                for kind, i in (op.a, op.b):
                    if not ((kind == "q" and 0 <= i < len(task.quantities)) or (kind == "s" and 0 <= i < k)):
                        raise ValueError(f"op {k}: reference {[kind, i]} out of range")
            if not task.ops or not all(0 <= i < len(task.quantities) for i in task.distractors):
                raise ValueError("no ops, or a distractor index out of range")
            return task
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a mathsim task record ({type(e).__name__}: {e})") from None


def apply_op(op: str, x, y):
    """x op y as an exact Fraction; None when undefined (division by zero)."""
    x, y = Fraction(x), Fraction(y)
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    return x / y if y != 0 else None


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and sentence templates. Three kinds of quantity keep multiplication and division meaningful:
# "items" (apples), "boxes" (crates) and "rate" (apples per crate): items = rate * boxes, boxes = items / rate,
# rate = items / boxes; addition and subtraction combine two quantities of one kind.
NAMES = ["Mia", "Noah", "Lena", "Omar", "Sofia", "Ravi", "Emma", "Jack", "Aisha", "Leo", "Hana", "Diego", "Grace",
         "Yusuf", "Chloe", "Mateo", "Nora", "Kofi", "Ella", "Ivan", "Zara", "Ben", "Lucia", "Sam"]
OOD_NAMES = ["Priya", "Tomas", "Keiko"]
SCENES = [("apples", "crate", "crates"), ("muffins", "tray", "trays"), ("eggs", "carton", "cartons"),
          ("pencils", "box", "boxes"), ("stickers", "sheet", "sheets"), ("books", "shelf", "shelves"),
          ("marbles", "bag", "bags"), ("cookies", "tin", "tins"), ("flowers", "vase", "vases"),
          ("seeds", "packet", "packets"), ("bottles", "case", "cases"), ("oranges", "basket", "baskets"),
          ("beads", "jar", "jars"), ("cards", "pack", "packs"), ("candles", "carton", "cartons")]
OOD_SCENES = [("tomatoes", "bucket", "buckets"), ("toys", "bin", "bins"), ("shells", "pail", "pails")]
# Qualifiers never contain a word of the strategy grammar (to, by, from, and, with, into, among, each, fit, so,
# which) nor of a relation template, so handles can be used as strategy operands and read back unambiguously.
QUALS = ["in the kitchen", "in the garage", "in the shed", "on the porch", "in the van", "at the shop", "at home",
         "at school", "at the market", "on the farm", "in the store", "for the party", "for the fair",
         "for the picnic", "on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday",
         "in the morning", "in the afternoon", "in the evening", "on display", "in storage", "for sale",
         "in the attic", "in the hallway", "near the window", "in the basement", "in the classroom", "on the bus"]
KID_KINDS = {("add", k): (k, k) for k in ("items", "boxes", "rate")}
KID_KINDS.update({("sub", k): (k, k) for k in ("items", "boxes", "rate")})
KID_KINDS.update({("mul", "items"): ("rate", "boxes"), ("div", "boxes"): ("items", "rate"),
                  ("div", "rate"): ("items", "boxes")})
CAP = {"items": 600, "boxes": 40, "rate": 40}        # keeps numbers realistic
LEAF_CAP = {"items": 250, "boxes": 40, "rate": 40}


@dataclass(frozen=True)
class Template:
    name: str
    part: str            # intro | leaf | add | sub | mul | div | question
    text: str
    kinds: tuple = ("items", "boxes", "rate")   # kinds of the quantity the sentence states or defines
    ood_only: bool = False


T = Template
TEMPLATES = [
    T("counting", "intro", "{N} is counting {items} and {containers}."),
    T("sorting", "intro", "{N} is busy sorting {items}."),
    T("keeps_track", "intro", "{N} keeps track of {items} and {containers}.", ood_only=True),
    T("there_are", "leaf", "There are {n} {H}."),
    T("counts", "leaf", "{N} counts {n} {H}.", ("items", "boxes")),
    T("has", "leaf", "{N} has {n} {H}.", ("items", "boxes")),
    T("finds", "leaf", "{N} finds {n} {H}.", ("items", "boxes")),
    T("each_holds", "leaf", "Each {container}{ qual} holds {n} {items}.", ("rate",)),
    T("list_shows", "leaf", "The list shows {n} {H}.", ood_only=True),
    T("packs_each", "leaf", "{N} packs {n} {items} into each {container}{ qual}.", ("rate",), ood_only=True),
    T("plus", "add", "The number of {X} is the number of {A} plus the number of {B}."),
    T("make_up", "add", "Together, the {A} and the {B} make up the {X}."),
    T("together_with", "add", "The {X} are the {A} together with the {B}."),
    T("adding", "add", "Adding the {B} to the {A} gives the {X}.", ood_only=True),
    T("minus", "sub", "The number of {X} is the number of {A} minus the number of {B}."),
    T("remain", "sub", "The {X} are the {A} that remain once the {B} are taken out."),
    T("removed", "sub", "After the {B} are removed from the {A}, the {X} remain."),
    T("outnumber", "sub", "The {A} outnumber the {B} by the {X}.", ood_only=True),
    T("times", "mul", "The number of {X} is the number of {A} times the number of {B}."),
    T("each_of", "mul", "Each of the {B} holds the {A}, and together they hold the {X}."),
    T("fill_with", "mul", "The {X} fill the {B}, with the {A} in each one."),
    T("for_every", "mul", "For every one of the {B} there are the {A}, which makes the {X}.", ood_only=True),
    T("divided", "div", "The number of {X} is the number of {A} divided by the number of {B}."),
    T("packed", "div", "The {A} are packed into groups of the {B} to fill the {X}.", ("boxes",)),
    T("shared", "div", "The {A} are shared equally among the {B}, which gives the {X}.", ("rate",)),
    T("splitting", "div", "Splitting the {A} evenly across the {B} gives the {X}.", ("rate",), ood_only=True),
    T("fit_into", "div", "The {X} are how many times the {B} fit into the {A}.", ("boxes",), ood_only=True),
    T("how_many", "question", "How many {X} are there?"),
    T("number_of", "question", "What is the number of {X}?"),
    T("work_out", "question", "Can you work out how many {X} there are?", ood_only=True),
]
del T
_SLOTS = {"n": r"(?P<n>\d+)", "N": r"(?P<N>[A-Z][a-z]+)", " qual": r"(?: (?P<qual>[A-Za-z ]+?))?",
          "items": r"(?P<items>[a-z]+)", "container": r"(?P<container>[a-z]+)",
          "containers": r"(?P<containers>[a-z]+)"}
_SLOTS.update({k: rf"(?P<{k}>[A-Za-z ]+?)" for k in ("H", "X", "A", "B")})


def _template_regex(text: str) -> re.Pattern:
    parts = re.split(r"\{([^}]+)\}", text)
    return re.compile("".join(_SLOTS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


_TEMPLATE_RE = [(t, _template_regex(t.text)) for t in TEMPLATES]


def _handle(kind: str, scene: tuple, qual: str) -> str:
    items, container, containers = scene
    base = {"items": items, "boxes": containers, "rate": f"{items} per {container}"}[kind]
    return f"{base} {qual}" if qual else base


@dataclass
class _Node:
    kind: str
    op: str | None = None
    kids: list = field(default_factory=list)
    value: int = 0
    qual: str = ""
    handle: str = ""


def _shape(rng: random.Random, n_ops: int) -> list:
    """A random tree of n_ops operations: chains, bushes and everything between."""
    nodes = [_Node(rng.choice(["items", "items", "boxes", "rate"]))]
    for _ in range(n_ops):
        leaf = 0 if len(nodes) == 1 else rng.choice([i for i, n in enumerate(nodes) if n.op is None])
        node = nodes[leaf]
        allowed = [op for op in OPS if (op, node.kind) in KID_KINDS]
        node.op = rng.choice(allowed + allowed[2:])       # mul / div twice as likely: all four ops about as common
        node.kids = [len(nodes), len(nodes) + 1]
        nodes += [_Node(k) for k in KID_KINDS[(node.op, node.kind)]]
    return nodes


def _fill(rng: random.Random, nodes: list, i: int, v: int) -> bool:
    """Give node i the value v and its subtree values that make every operation exact; False if it cannot."""
    node = nodes[i]
    if not 2 <= v <= (CAP if node.op else LEAF_CAP)[node.kind]:
        return False
    node.value = v
    if node.op is None:
        return True
    for _ in range(4):
        if node.op == "add":
            if v < 4:
                return False
            x = rng.randint(2, v - 2)
            y = v - x
        elif node.op == "sub":
            y = rng.randint(2, max(2, min(v, 40)))
            x = v + y
        elif node.op == "mul":
            divisors = [d for d in range(2, v // 2 + 1) if v % d == 0]
            if not divisors:
                return False
            x = rng.choice(divisors)
            y = v // x
        else:
            y = rng.randint(2, 12)
            x = v * y
        if _fill(rng, nodes, node.kids[0], x) and _fill(rng, nodes, node.kids[1], y):
            return True
    return False


def _op_order(deps: dict, position: dict) -> list:
    """Operations in computation order: the earliest-stated operation whose inputs are ready goes next.
    Shared by the generator and the reader so both number the operations the same way."""
    order, done = [], set()
    while len(order) < len(deps):
        ready = [k for k in deps if k not in done and all(d in done for d in deps[k])]
        if not ready:
            raise UnreadableProblem("the relations between quantities form a cycle")
        nxt = min(ready, key=position.__getitem__)
        order.append(nxt)
        done.add(nxt)
    return order


def _solution(quantities: tuple, ops: tuple) -> tuple:
    """The reference solution text and the exact answer (None when a division is inexact or a result negative)."""
    values, lines = [], []
    for k, op in enumerate(ops, 1):
        x, y = (quantities[r[1]].value if r[0] == "q" else values[r[1]] for r in (op.a, op.b))
        v = apply_op(op.op, x, y)
        if v is None or v.denominator != 1 or v < 0:
            return None, None
        values.append(int(v))
        lines.append(f"Step {k}: {x} {SYMBOLS[op.op]} {y} = {int(v)}")
    return "\n".join(lines + [f"#### {values[-1]}"]), values[-1]


def _make_task(rng: random.Random, split: str, task_id: str, level: int) -> MathTask:
    ood = split == "ood"
    pick = [t for t in TEMPLATES if ood or not t.ood_only]
    name = rng.choice(NAMES + (OOD_NAMES if ood else []))
    scene = rng.choice(SCENES + (OOD_SCENES if ood else []))
    ops_lo, ops_hi, max_distractors = LEVELS[level]
    n_ops, n_distractors = rng.randint(ops_lo, ops_hi), rng.randint(0, max_distractors)
    while True:
        nodes = _shape(rng, n_ops)
        root_value = rng.randint(6, 300) if nodes[0].kind == "items" else rng.randint(2, 30)
        if _fill(rng, nodes, 0, root_value):
            break
    n_real = len(nodes)
    for _ in range(n_distractors):
        kind = rng.choice(["items", "boxes", "rate"])
        nodes.append(_Node(kind, value=rng.randint(2, min(60, LEAF_CAP[kind]))))
    quals, used = rng.sample(QUALS, len(QUALS)), set()

    def name_node(node: _Node, inherited: str | None):
        options = ([inherited] if inherited is not None else []) + ([""] if rng.random() < 0.15 else []) + quals
        node.qual = next(q for q in options if _handle(node.kind, scene, q) not in used)
        node.handle = _handle(node.kind, scene, node.qual)
        used.add(node.handle)
        if node.qual in quals:
            quals.remove(node.qual)

    name_node(nodes[0], None)
    for node in nodes:                         # parents come before their kids in `nodes`
        for kid in node.kids:
            name_node(nodes[kid], node.qual if node.op in ("mul", "div") else None)
        if not node.handle:
            name_node(node, None)              # a distractor

    # every quantity is stated in one sentence; the root's sentence defines what the question asks for
    if level == 1:                             # computation order: a post-order walk, what an operation needs first
        facts = []

        def post_order(i: int):
            for kid in nodes[i].kids:
                post_order(kid)
            facts.append(i)

        post_order(0)
        for d in range(n_real, len(nodes)):    # distractors anywhere
            facts.insert(rng.randint(0, len(facts)), d)
    else:                                      # shuffled, the root's sentence anywhere too
        facts = list(range(1, len(nodes)))
        rng.shuffle(facts)
        facts.insert(rng.randint(0, len(facts)), 0)
    position = {i: p for p, i in enumerate(facts)}
    leaves = sorted((i for i in facts if nodes[i].op is None), key=position.__getitem__)
    ops_at = [i for i in range(len(nodes)) if nodes[i].op]
    order = _op_order({i: [k for k in nodes[i].kids if nodes[k].op] for i in ops_at}, position)
    ref = {i: ("q", leaves.index(i)) for i in leaves} | {i: ("s", order.index(i)) for i in order}
    quantities = tuple(Quantity(nodes[i].value, nodes[i].handle) for i in leaves)
    ops = tuple(Op(nodes[i].op, ref[nodes[i].kids[0]], ref[nodes[i].kids[1]]) for i in order)
    used_leaves = {ref[k][1] for i in order for k in nodes[i].kids if nodes[k].op is None}
    solution, answer = _solution(quantities, ops)

    def say(part: str, kind: str, **slots) -> str:
        template = rng.choice([t for t in pick if t.part == part and kind in t.kinds])
        return template.text.format(**slots)

    items, container, containers = scene
    sentences = [say("intro", "items", N=name, items=items, containers=containers)]
    for i in facts:
        node = nodes[i]
        if node.op is None:
            sentences.append(say("leaf", node.kind, n=node.value, H=node.handle, N=name, items=items,
                                 container=container, **{" qual": " " + node.qual if node.qual else ""}))
        else:
            a, b = (nodes[k].handle for k in node.kids)
            sentences.append(say(node.op, node.kind, X=node.handle, A=a, B=b))
    sentences.append(say("question", nodes[0].kind, X=nodes[0].handle))
    distractors = tuple(q for q in range(len(quantities)) if q not in used_leaves)
    return MathTask(task_id, split, " ".join(sentences), answer, solution, quantities, ops, distractors)


def generate_tasks(n: int, seed: int, split: str, level: int = 2) -> list:
    """n tasks, a pure function of (n, seed, split, level); task i depends only on (seed, split, level, i)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(str, LEVELS))}, got {level!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = f"mathsim/{split}/{seed}" if level == 2 else f"mathsim/L{level}/{split}/{seed}"
    return [_make_task(random.Random(f"{stream}/{i}"), split, f"{split}-{seed}-{i}", level) for i in range(n)]


def _match_sentences(problem: str) -> list:
    """[(template, match)] for every sentence, or UnreadableProblem naming the first sentence that fits no template."""
    if not isinstance(problem, str) or not problem.strip():
        raise UnreadableProblem("the problem text is empty")
    out = []
    for k, sentence in enumerate(re.split(r"(?<=[.?!])\s+", problem.strip()), 1):
        hit = next(((t, m) for t, rx in _TEMPLATE_RE if (m := rx.fullmatch(sentence))), None)
        if hit is None:
            raise UnreadableProblem(f"sentence {k} is not in a form the mathsim reader knows: {sentence[:80]!r}")
        out.append(hit)
    return out


def read_problem(problem: str) -> MathTask:
    """The inverse of the generator: the task (id and split empty) from the problem text alone."""
    matched = _match_sentences(problem)
    if matched[-1][0].part != "question" or any(t.part == "question" for t, _ in matched[:-1]):
        raise UnreadableProblem("the problem must end with its one question")
    quantities, defs, position = [], {}, {}
    for p, (t, m) in enumerate(matched[:-1]):
        g = m.groupdict()
        if t.part == "leaf":
            handle = g.get("H") or " ".join(x for x in (g["items"], "per", g["container"], g["qual"]) if x)
            quantities.append(Quantity(int(g["n"]), handle))
        elif t.part != "intro":
            if g["X"] in defs:
                raise UnreadableProblem(f"the {g['X']} are defined twice")
            defs[g["X"]] = (t.part, g["A"], g["B"])
            position[g["X"]] = p
    handles = [q.handle for q in quantities]
    if len(set(handles)) != len(handles) or set(handles) & set(defs):
        raise UnreadableProblem("two facts give the same quantity")
    root = matched[-1][1]["X"]
    if root not in defs:
        raise UnreadableProblem(f"the question asks for the {root}, which no fact defines")
    needed, stack = set(), [root]
    while stack:
        x = stack.pop()
        if x in needed:
            continue
        needed.add(x)
        for operand in defs[x][1:]:
            if operand in defs:
                stack.append(operand)
            elif operand not in handles:
                raise UnreadableProblem(f"the {operand} are used but never given")
    if needed != set(defs):
        raise UnreadableProblem(f"the {sorted(set(defs) - needed)[0]} are defined but never used")
    order = _op_order({x: [o for o in defs[x][1:] if o in defs] for x in defs}, position)
    ref = {h: ("q", i) for i, h in enumerate(handles)} | {x: ("s", k) for k, x in enumerate(order)}
    ops = tuple(Op(defs[x][0], ref[defs[x][1]], ref[defs[x][2]]) for x in order)
    quantities = tuple(quantities)
    solution, answer = _solution(quantities, ops)
    if solution is None:
        raise UnreadableProblem("a division is not exact or a result is negative")
    used = {r[1] for op in ops for r in (op.a, op.b) if r[0] == "q"}
    return MathTask("", "", problem, answer, solution, quantities, ops,
                    tuple(i for i in range(len(quantities)) if i not in used))


def templates_used(problem: str) -> list:
    """Names of the templates the sentences of a problem use (to check which split a text could come from)."""
    return [t.name for t, _ in _match_sentences(problem)]


# ---------------------------------------------------------------------------------------------------------------
# Strategies (DESIGN 4.2). A step is "<verb form with operands {a} and {b}>", e.g. "Subtract {a} from {b}" (b - a).
@dataclass(frozen=True)
class VerbForm:
    key: str         # the lexicon entry of DESIGN 4.3, e.g. "Increase … by"
    op: str
    pattern: str     # e.g. "Increase {a} by {b}"
    swap: bool       # the value is b op a ("Subtract {a} from {b}")


def _forms(op: str, *entries) -> list:
    return [VerbForm(key, op, pattern, swap) for key, pattern, swap in entries]


VERBS = {
    "add": _forms("add", ("Add", "Add {a} to {b}", False), ("Add", "Add {a} and {b}", False),
                  ("Sum", "Sum {a} and {b}", False), ("Increase … by", "Increase {a} by {b}", False),
                  ("Total", "Total {a} and {b}", False), ("Put together", "Put together {a} and {b}", False),
                  ("Combine", "Combine {a} with {b}", False), ("Combine", "Combine {a} and {b}", False)),
    "sub": _forms("sub", ("Subtract", "Subtract {a} from {b}", True), ("Take away", "Take away {a} from {b}", True),
                  ("Find the difference between", "Find the difference between {a} and {b}", False),
                  ("Remove", "Remove {a} from {b}", True), ("Reduce … by", "Reduce {a} by {b}", False),
                  ("Deduct", "Deduct {a} from {b}", True)),
    "mul": _forms("mul", ("Multiply", "Multiply {a} by {b}", False),
                  ("Find the product of", "Find the product of {a} and {b}", False),
                  ("Times", "Times {a} by {b}", False), ("Repeat … for each", "Repeat {a} for each {b}", False),
                  ("Scale", "Scale {a} by {b}", False)),
    "div": _forms("div", ("Divide", "Divide {a} by {b}", False),
                  ("Find the quotient of", "Find the quotient of {a} and {b}", False),
                  ("Split … into", "Split {a} into {b}", False), ("Share … among", "Share {a} among {b}", False),
                  ("Find how many … fit in", "Find how many {a} fit in {b}", True)),
}
CANONICAL = {op: forms[0] for op, forms in VERBS.items()}
_SWAP = {f.key: f.swap for forms in VERBS.values() for f in forms}
# The first operand ends at the verb form's next word, except inside "the result of step k".
_A = r"(?P<a>the (?:result|answer|value) (?:of|from) step \d+|.+?)"
_FORM_RE = sorted(((f, re.compile(r"\b" + r"\s+".join(
    {"{a}": _A, "{b}": r"(?P<b>.+)"}.get(w, re.escape(w)) for w in f.pattern.split()) + "$", re.I))
    for forms in VERBS.values() for f in forms), key=lambda fr: -len(fr[0].pattern))
_GENERIC = re.compile(rf"(?P<verb>[A-Za-z]+)\s+{_A}\s+(?:and|by|to|from|with|into|among|in|of|over)\s+(?P<b>.+)$",
                      re.I)
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
# An operand that is a number, a step reference or a pronoun ends there; what follows is filler.
_CLOSED = re.compile(rf"(?:the (?:result|answer|value) (?:of|from) step \d+|step \d+|that result|this result|"
                     rf"the previous result|the last result|it|that|this|\$?{_NUMBER})(?!\w)", re.I)
_TAIL = re.compile(r"[,;:!?]|\.(?:\s|$)|\s(?:to|so|which|giving|then)\s", re.I)
MAX_STEPS = 50


@dataclass(frozen=True)
class Step:
    index: int                 # 1-based
    op: str | None             # None when the verb is not in the lexicon
    verb: str                  # lexicon key, or the unknown verb word as written
    operands: tuple            # raw operand texts in grammar order ({a}, {b})
    filler_words: int          # words outside the step grammar

    @property
    def args(self) -> tuple:
        """The operands in arithmetic order: the step computes args[0] op args[1]."""
        return self.operands[::-1] if _SWAP.get(self.verb) else self.operands


@dataclass
class ParsedStrategy:
    steps: list = field(default_factory=list)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def _split_operand(text: str) -> tuple:
    """(operand, filler after it)."""
    text = text.strip()
    m = _CLOSED.match(text)
    if m:
        return m.group(0), text[m.end():]
    m = _TAIL.search(text)
    return (text[:m.start()].strip(), text[m.start():]) if m else (text, "")


def _parse_step(index: int, text: str) -> Step | None:
    text = text.strip().rstrip(".").strip()
    best = None
    for form, rx in _FORM_RE:
        m = rx.search(text)
        if m and (best is None or m.start() < best[1].start()):
            best = (form, m)
    if best:
        form, m = best
        verb, op = form.key, form.op
    else:
        m = _GENERIC.match(text)
        if not m:
            return None
        verb, op = m.group("verb").capitalize(), None
    a = m.group("a").strip()
    b, tail = _split_operand(m.group("b"))
    if not a or not b:
        return None
    return Step(index, op, verb, (a, b), _words(text[:m.start()]) + _words(tail))


def numbered_steps(text, code_fence_invalid=False) -> tuple:
    """(the step texts of the first <strategy> block, None) or (None, why the envelope is invalid): both tags, lines
    numbered 1, 2, 3, ... (an unnumbered line continues the step above it; text before step 1 is an error)."""
    if not isinstance(text, str):
        return None, "the strategy is not text"
    start = text.find("<strategy>")
    if start < 0:
        return None, "missing <strategy> tag"
    end = text.find("</strategy>", start)
    if end < 0:
        return None, "missing </strategy> tag"
    body = text[start + len("<strategy>"):end]
    if code_fence_invalid and "```" in body:
        return None, "a code block inside the strategy"
    steps = []
    for line in filter(None, (line.strip() for line in body.splitlines())):
        m = re.match(r"(\d+)[.)](?!\d)\s*(.*)", line)
        if m:
            if int(m.group(1)) != len(steps) + 1:
                return None, (f"steps must be numbered 1, 2, 3, ...: found {m.group(1)} where {len(steps) + 1} "
                              "was expected")
            steps.append(m.group(2))
        elif steps:
            steps[-1] += " " + line
        else:
            return None, f"text before step 1: {line[:60]!r}"
    return steps, None


def parse_strategy(text: str) -> ParsedStrategy:
    """The steps of the first <strategy> block, or why the text is not a valid strategy. Valid means: both tags,
    at least one step, lines numbered 1, 2, 3, ... (an unnumbered line continues the step above it; text before
    step 1 is an error), at most MAX_STEPS steps, and every step an operation on two operands. A verb outside the
    lexicon still makes a valid step, with op None."""
    raw, error = numbered_steps(text)
    if error:
        return ParsedStrategy(error=error)
    if not raw:
        return ParsedStrategy(error="no numbered steps inside the <strategy> block")
    if len(raw) > MAX_STEPS:
        return ParsedStrategy(error=f"more than {MAX_STEPS} steps")
    steps = []
    for i, line in enumerate(raw, 1):
        step = _parse_step(i, line)
        if step is None:
            return ParsedStrategy(error=f"step {i} is not an operation on two operands: {line[:60]!r}")
        steps.append(step)
    return ParsedStrategy(steps=steps)


def strategy_envelope(lines: list, rng, fault_rate: float) -> str:
    """Numbered step lines inside the <strategy> tags; with probability fault_rate one format fault (a missing
    opening or closing tag, or "Step k:" numbering), as a simulated teacher makes them."""
    body = ["<strategy>"] + lines + ["</strategy>"]
    if rng.random() < fault_rate:
        fault = rng.choice(["open", "close", "numbering"])
        if fault == "open":
            body = body[1:]
        elif fault == "close":
            body = body[:-1]
        else:
            body = [re.sub(r"^(\d+)\.", r"Step \1:", line) for line in body]
    return "\n".join(body)


def extract_strategy(text: str) -> str | None:
    """The first complete "<strategy>...</strategy>" block of a reply, or None."""
    m = re.search(r"<strategy>.*?</strategy>", text or "", re.S)
    return m.group(0) if m else None


def _numbers(text: str) -> list:
    return [Fraction(s.replace(",", "")) for s in re.findall(_NUMBER, text)]


def leaks(strategy: str, problem: str, answer: int) -> bool:
    """True when the strategy states the answer as a number the problem does not contain (step numbers and
    "step k" references do not count)."""
    text = re.sub(r"(?m)^\s*\d+[.)](?!\d)", " ", strategy or "")
    text = re.sub(r"(?i)\bsteps?\s+\d+", " ", text)
    return answer in _numbers(text) and answer not in _numbers(problem)


def extract_answer(reply: str) -> int | None:
    """The number after the last "####", else the last number in the reply; None if absent or not whole."""
    marked = re.findall(rf"####\s*\$?\s*(-?{_NUMBER})", reply or "")
    found = marked or re.findall(rf"-?{_NUMBER}", reply or "")
    if not found:
        return None
    value = Fraction(found[-1].replace(",", ""))
    return int(value) if value.denominator == 1 else None


def canonical_strategy(task: MathTask, by_handle: bool = False) -> str:
    """The clearest strategy: one step per operation in order, canonical verbs, numbers (by_handle: the problem's
    exact handles) as operands. An oracle: for validation curves and analysis only."""
    def name(ref):
        if ref[0] == "s":
            return f"the result of step {ref[1] + 1}"
        q = task.quantities[ref[1]]
        return "the " + q.handle if by_handle else str(q.value)
    lines = []
    for k, op in enumerate(task.ops, 1):
        x, y = name(op.a), name(op.b)
        form = CANONICAL[op.op]
        a, b = (y, x) if form.swap or (op.op == "add" and op.a[0] == "s" and op.b[0] == "q") else (x, y)
        lines.append(f"{k}. {form.pattern.format(a=a, b=b)}.")
    return "<strategy>\n" + "\n".join(lines) + "\n</strategy>"


# What the simulated core writes when it abandons a strategy at an unclear step and solves the rest alone.
UNCLEAR_NOTE = "of the strategy is unclear, so I solve the rest myself."


def deferred(valid: bool, reply_text: str | None) -> bool:
    """Did the strategy leave the work to the core: invalid (the core ignores it) or abandoned at an unclear step
    (the simulated core says so; a real core's reply carries no such note, so there only invalid counts)?"""
    return not valid or (reply_text is not None and UNCLEAR_NOTE in reply_text)


def numbers_named(strategy: str) -> int:
    """How many operands of a strategy are numbers (step numbers and "step k" references aside): each one the guide
    had to look up in the problem rather than copy its phrase."""
    body = re.sub(r"(?m)^\s*\d+[.)]", "", strategy)
    return len(re.findall(r"(?<!step )(?<![\w.])\d[\d,]*(?:\.\d+)?", body, flags=re.I))


def grammar_text() -> str:
    """The strategy grammar's own words, as one strategy per verb form: what a from-scratch guide's tokenizer learns
    besides the problems (it never sees a task's canonical strategy, an oracle)."""
    forms = [f for forms in VERBS.values() for f in forms]
    lines = [f"{k}. {f.pattern.format(a='the result of step 1', b='the result of step 2')}."
             for k, f in enumerate(forms, 1)]
    return "<strategy>\n" + "\n".join(lines) + "\n</strategy>"


def plan_matches(task: MathTask, strategy: str) -> bool:
    """Is the strategy the task's plan: it parses, and its steps compute exactly the solution's operations (in any
    order that respects their inputs), each operand a number, an exact handle, an earlier step or a pronoun for the
    step before? For validation curves and analysis only: it reads the task's hidden solution."""
    parsed = parse_strategy(strategy)
    if not parsed.valid or len(parsed.steps) != len(task.ops):
        return False
    by_handle = {re.sub(r"^the ", "", q.handle.lower()): Fraction(q.value) for q in task.quantities}
    values = []
    for step in parsed.steps:
        args = []
        for text in step.args:
            t = text.strip().lower()
            ref = re.fullmatch(r"(?:the (?:result|answer|value) (?:of|from) )?step (\d+)", t)
            if ref and 1 <= int(ref.group(1)) <= len(values):
                args.append(values[int(ref.group(1)) - 1])
            elif t in ("it", "that", "this", "that result", "this result", "the previous result", "the last result"):
                args.append(values[-1] if values else None)
            elif re.fullmatch(_NUMBER, t):
                args.append(Fraction(t.replace(",", "")))
            else:
                args.append(by_handle.get(re.sub(r"^(?:the )?(?:number of )?(?:the )?", "", t)))
        if step.op is None or None in args:
            return False
        values.append(apply_op(step.op, *args))
    solution = []
    for op in task.ops:
        x, y = (Fraction(task.quantities[r[1]].value) if r[0] == "q" else solution[r[1]][1] for r in (op.a, op.b))
        solution.append((op.op, apply_op(op.op, x, y)))
    return values[-1] == task.answer and Counter(zip((s.op for s in parsed.steps), values)) == Counter(solution)


# ---------------------------------------------------------------------------------------------------------------
# Prompts: the one place for the text that the guide, the core and the teacher receive.
CORE_SYSTEM = ("You are a careful math assistant. Solve the word problem. Write your work one operation per line as "
               "'Step k: a op b = c' with op one of + - * /, then a final line '#### N' where N is the answer as a "
               "whole number. If a strategy is given, follow its steps in order.")
_TEACHER_FORMAT = ("You write strategies that a weaker model follows to solve a math word problem. Reply with exactly "
                   "one block in this format:\n<strategy>\n1. Multiply 3 by 6.\n2. Add 14 to the result of step 1.\n"
                   "</strategy>\nOne arithmetic operation per numbered step, on ")
_TEACHER_RULES = " or 'the result of step k'; the last step gives the answer. Do not state the final answer."
TEACHER_SYSTEM = _TEACHER_FORMAT + "numbers from the problem" + _TEACHER_RULES
# The teacher's naming instruction (README, The offline world): a quantity named by the problem's own phrase is copied by
# the guide far more easily than a number it must look up. The simulated teacher reacts to this exact sentence.
NAME_QUANTITIES = "Name each given quantity as the problem names it."
_PROBLEM, _STRATEGY = "Problem: ", "\n\nStrategy:\n"


def guide_prompt(problem: str) -> str:
    return f"{_PROBLEM}{problem}\nStrategy:\n"


def core_messages(problem: str, strategy: str | None) -> list:
    user = _PROBLEM + problem + ("" if strategy is None else _STRATEGY + strategy)
    return [{"role": "system", "content": CORE_SYSTEM}, {"role": "user", "content": user}]


def teacher_messages(problem: str, name_quantities: bool = False) -> list:
    system = (_TEACHER_FORMAT + "the problem's quantities" + _TEACHER_RULES + " " + NAME_QUANTITIES if name_quantities
              else TEACHER_SYSTEM)
    return [{"role": "system", "content": system}, {"role": "user", "content": _PROBLEM + problem}]


def asks_to_name_quantities(messages) -> bool:
    """Does a teacher request carry the naming instruction in a system message?"""
    return any(isinstance(m, dict) and m.get("role") == "system" and isinstance(m.get("content"), str)
               and NAME_QUANTITIES in m["content"] for m in messages)


def _user_text(messages) -> str:
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str) or not users[-1].startswith(_PROBLEM):
        raise ValueError(f"the last user message must start with {_PROBLEM!r}")
    return users[-1][len(_PROBLEM):]


def parse_core_request(messages) -> tuple:
    """(problem, strategy or None) from core_messages' output."""
    text = _user_text(messages)
    problem, sep, strategy = text.partition(_STRATEGY)
    return problem, (strategy if sep else None)


def parse_teacher_request(messages) -> str:
    return _user_text(messages).partition(_STRATEGY)[0]


# ---------------------------------------------------------------------------------------------------------------
# Task family `gsm8k`: the real benchmark (DESIGN 4.6), for a real core. GSM8K's own files are read from a directory
# (train.jsonl and test.jsonl, one {"question", "answer"} object a line, the answer's last line "#### N"); val is
# carved from train with a fixed seed. Strategies are free text in the same <strategy> envelope, so the reward,
# acceptance sampling and the table work unchanged; only their validity rule, the answer reader and the prompts differ.

GSM8K_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
GSM8K_MAX_STEPS, GSM8K_MAX_STEP_WORDS = 12, 60


@dataclass(frozen=True)
class GSM8KTask:
    family: ClassVar[str] = "gsm8k"
    id: str            # "<file split>-<line number>", stable whichever split val carves it into
    split: str
    problem: str
    answer: int
    solution: str      # GSM8K's worked solution (with its <<calculator>> annotations), for reference only

    def to_json(self) -> dict:
        return {"family": "gsm8k", "id": self.id, "split": self.split, "problem": self.problem,
                "answer": self.answer, "solution": self.solution}

    @staticmethod
    def from_json(d: dict) -> "GSM8KTask":
        try:
            return GSM8KTask(d["id"], d["split"], d["problem"], int(d["answer"]), d.get("solution", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a gsm8k task record ({type(e).__name__}: {e})") from None


def _gsm8k_file(path: str, split: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (see data/README.md for where to get GSM8K)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, solution = row["question"], row["answer"]
            _, mark, tail = solution.rpartition("####")
            if not mark:
                raise ValueError("no '####' line")
            answer = int(tail.strip().replace(",", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}:{n}: not a GSM8K record (need \"question\" and an \"answer\" ending in "
                             f"'#### N')") from None
        out.append(GSM8KTask(f"{split}-{n}", split, question, answer, solution))
    return out


def load_gsm8k(data_dir: str, n_val: int = 200, seed: int = 0) -> dict:
    """{"train", "val", "test": [GSM8KTask]}: the test file as is, val = n_val train problems drawn with seed."""
    train = _gsm8k_file(os.path.join(data_dir, GSM8K_FILES["train"]), "train")
    test = _gsm8k_file(os.path.join(data_dir, GSM8K_FILES["test"]), "test")
    if not 0 <= n_val < len(train):
        raise ValueError(f"n_val must be in 0..{len(train) - 1} (GSM8K train has {len(train)} problems), got {n_val}")
    val_ids = set(random.Random(seed).sample(range(len(train)), n_val))
    val = [GSM8KTask(t.id, "val", t.problem, t.answer, t.solution) for i, t in enumerate(train) if i in val_ids]
    return {"train": [t for i, t in enumerate(train) if i not in val_ids], "val": val, "test": test}


def gsm8k_parse_strategy(text: str) -> ParsedStrategy:
    """The steps (as text) of the first <strategy> block, or why it is invalid: both tags, steps numbered 1..n with
    1 <= n <= 12 (an unnumbered line continues the step above it), each step non-empty and at most 60 words, and no
    code block (a ``` fence)."""
    steps, error = numbered_steps(text, code_fence_invalid=True)
    if error:
        return ParsedStrategy(error=error)
    if not 1 <= len(steps) <= GSM8K_MAX_STEPS:
        return ParsedStrategy(error=f"{len(steps)} steps (need 1 to {GSM8K_MAX_STEPS})")
    for i, step in enumerate(steps, 1):
        words = len(step.split())
        if not words or words > GSM8K_MAX_STEP_WORDS:
            return ParsedStrategy(error=f"step {i} has {words} words (need 1 to {GSM8K_MAX_STEP_WORDS})")
    return ParsedStrategy(steps=steps)


gsm8k_leaks = leaks    # the same rule: the answer stated as a number the problem does not contain


_GSM8K_NUMBER = r"-?(?:\\?\$)?\s*\d[\d,]*(?:\.\d+)?"       # -12, $1,234.50, \$18 (LaTeX)


def gsm8k_extract_answer(reply: str):
    """The reply's final answer as an int (or a Fraction when not whole), None when it has none. The last marked
    answer wins: "#### N", then "\\boxed{N}", then "the answer is N"; else the last number in the reply. Dollar
    signs, thousands commas, a trailing period and a trailing ".00" are ignored."""
    reply = reply or ""
    for marker in (r"####\s*", r"\\boxed\{\s*", r"\banswer\s*(?:is|:)[\s*:]*"):
        found = re.findall(marker + f"({_GSM8K_NUMBER})", reply, re.I)
        if found:
            break
    else:
        found = re.findall(_GSM8K_NUMBER, reply)
    if not found:
        return None
    value = Fraction(re.sub(r"[\\$,\s]", "", found[-1]))
    return int(value) if value.denominator == 1 else value


GSM8K_CORE_SYSTEM = ("Solve the grade-school math problem. Think step by step, then end with a final line "
                     "'#### N' where N is the answer as a number. If a strategy is given, follow its steps in order.")
GSM8K_TEACHER_SYSTEM = ("You write strategies that a weaker model follows to solve a grade-school math problem. "
                        "Reply with exactly one block:\n<strategy>\n1. <first step>\n2. <next step>\n</strategy>\n"
                        f"Between 1 and {GSM8K_MAX_STEPS} numbered steps, each one short instruction of at most "
                        f"{GSM8K_MAX_STEP_WORDS} words saying which quantities to combine and how. No code. Do not "
                        "compute or state the final answer.")
GSM8K_GUIDE_SYSTEM = ("Write a numbered plan that another model will follow to solve the math problem, inside "
                      "<strategy> and </strategy>. Do not state the final answer.")


def gsm8k_guide_messages(problem: str) -> list:
    """The guide's input; a pretrained chat guide sees it through its chat template."""
    return [{"role": "system", "content": GSM8K_GUIDE_SYSTEM}, {"role": "user", "content": _PROBLEM + problem}]


def gsm8k_core_messages(problem: str, strategy: str | None) -> list:
    user = _PROBLEM + problem + ("" if strategy is None else _STRATEGY + strategy)
    return [{"role": "system", "content": GSM8K_CORE_SYSTEM}, {"role": "user", "content": user}]


def gsm8k_teacher_messages(problem: str, name_quantities: bool = False) -> list:
    system = GSM8K_TEACHER_SYSTEM + (" " + NAME_QUANTITIES if name_quantities else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": _PROBLEM + problem}]


def gsm8k_guide_prompt(problem: str) -> str:
    """The guide's input as plain text, for a guide without a chat format (a from-scratch or base model)."""
    return f"{GSM8K_GUIDE_SYSTEM}\n\n{_PROBLEM}{problem}\nStrategy:\n"


def gsm8k_training_text(task: GSM8KTask):
    """Text for a from-scratch guide's tokenizer: its prompt and GSM8K's worked solution (no strategies exist yet)."""
    yield gsm8k_guide_prompt(task.problem)
    yield task.solution


# ---------------------------------------------------------------------------------------------------------------
# The guide's completion ends at the envelope's closing tag (or at its EOS token).

STOP = "</strategy>"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print seeded tasks as JSON lines.")
    parser.add_argument("family", choices=["mathsim"])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--level", type=int, default=2, choices=sorted(LEVELS),
                        help="1: 1-3 operations in computation order; 2: 2-6 operations, shuffled facts")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error(f"--n must be >= 0, got {args.n}")
    for task in generate_tasks(args.n, args.seed, args.split, args.level):
        print(json.dumps(task.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
