"""The mathsim world: seeded GSM8K-style word problems, their exact reader, their oracles and their prompts.

1. `generate_tasks` writes seeded GSM8K-style word problems: operations forming a tree-shaped DAG (an operation may
   combine two earlier results), distractor facts, integer answers, `#### N` solutions. Every given number has a
   handle, a short noun phrase from its sentence, unique within the problem. Two levels (docs/world.md §2, `LEVELS`):
   level 2 has 2-6 operations, 0-2 distractors and facts in shuffled order; level 1, the easy form for small
   compute, has 1-3 operations, 0-1 distractor and facts in computation order (what an operation needs is stated
   before it).
2. The text is invertible: `read_problem` recovers quantities, handles, operations and answer from the text alone,
   so the simulated core (sim_math.py) understands requests without hidden metadata.
3. Splits: `train`, `val` and `test` are drawn from one distribution (other seeds), as GSM8K's are. `ood` also uses
   held-out phrasings that the other splits never show (templates marked `ood_only` below: leaf templates
   `list_shows` and `packs_each`, relation templates `adding`, `outnumber`, `for_every`, `splitting`, `fit_into`,
   question `work_out`, intro `keeps_track`; the names and scenes of OOD_NAMES and OOD_SCENES).
4. Oracles, for validation curves and analysis only: `canonical_strategy` writes a task's clearest strategy in the
   verb grammar of strategy_format.py, `plan_matches` says whether a strategy is the task's plan.
5. `renamed`: a problem with new numbers in the same sentences, and its strategies carried over (the augmentation
   of acceptance sampling, `sample --renamings`).
6. The core's and the teacher's mathsim prompts (the guide's is strategy_format.guide_prompt, shared by the
   families). `python mathsim.py --n 3` prints seeded tasks as JSON lines.
"""
import argparse
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

from strategy_format import CANONICAL, NAME_QUANTITIES, NUMBER, chat_messages, parse_strategy, rename_numbers

OPS = ("add", "sub", "mul", "div")
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
SPLITS = ("train", "val", "test", "ood")   # train / val / test i.i.d.; ood: held-out phrasings


@dataclass(frozen=True)
class Level:
    min_ops: int              # operations per problem: min_ops to max_ops
    max_ops: int
    max_distractors: int      # distractor facts per problem: 0 to max_distractors
    shuffled_facts: bool      # False: facts in computation order (inputs first); True: shuffled, the question's too


LEVELS = {1: Level(min_ops=1, max_ops=3, max_distractors=1, shuffled_facts=False),
          2: Level(min_ops=2, max_ops=6, max_distractors=2, shuffled_facts=True)}


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
        operands = _operands(rng, node.op, v)
        if operands is None:
            return False
        if _fill(rng, nodes, node.kids[0], operands[0]) and _fill(rng, nodes, node.kids[1], operands[1]):
            return True
    return False


def _operands(rng: random.Random, op: str, v: int) -> tuple | None:
    """Two operands that `op` turns into exactly v, drawn at random; None when v has none (a prime for mul)."""
    if op == "add":
        if v < 4:
            return None
        x = rng.randint(2, v - 2)
        return x, v - x
    if op == "sub":
        y = rng.randint(2, max(2, min(v, 40)))
        return v + y, y
    if op == "mul":
        divisors = [d for d in range(2, v // 2 + 1) if v % d == 0]
        if not divisors:
            return None
        x = rng.choice(divisors)
        return x, v // x
    y = rng.randint(2, 12)
    return v * y, y


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
    shape = LEVELS[level]
    n_ops, n_distractors = rng.randint(shape.min_ops, shape.max_ops), rng.randint(0, shape.max_distractors)
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
    if not shape.shuffled_facts:               # computation order: a post-order walk, what an operation needs first
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


# ---------------------------------------------------------------------------------------------------------------
# The reader: the generator's inverse, from the text alone.
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


def shows_held_out(problem: str) -> bool:
    """Does a problem show a phrasing only the `ood` split uses (a held-out template, name or scene)? An oracle for
    reporting (what a guide declines on held-out phrasings), never a feature of the recipe."""
    sentences = re.split(r"(?<=[.?!])\s+", problem.strip())
    if any(_template_regex(t.text).fullmatch(x) for t in TEMPLATES if t.ood_only for x in sentences):
        return True
    words = set(re.findall(r"[A-Za-z]+", problem))
    return bool(words & (set(OOD_NAMES) | {w for scene in OOD_SCENES for w in scene}))


def read_problem(problem: str) -> MathTask:
    """The inverse of the generator: the task (id and split empty) from the problem text alone."""
    return _read(problem)[0]


def relation_templates(problem: str) -> tuple:
    """The name of the relation template (TEMPLATES) whose sentence defines each operation's result, in the order of
    read_problem(problem).ops: what the simulated teacher's echo habit reads (docs/world.md §5)."""
    return _read(problem)[1]


def _read(problem: str) -> tuple:
    """(the task, the template name of each of its operations): read_problem and relation_templates."""
    matched = _match_sentences(problem)
    if matched[-1][0].part != "question" or any(t.part == "question" for t, _ in matched[:-1]):
        raise UnreadableProblem("the problem must end with its one question")
    quantities, defs, position, template = [], {}, {}, {}
    for p, (t, m) in enumerate(matched[:-1]):
        g = m.groupdict()
        if t.part == "leaf":
            handle = g.get("H") or " ".join(x for x in (g["items"], "per", g["container"], g["qual"]) if x)
            quantities.append(Quantity(int(g["n"]), handle))
        elif t.part != "intro":
            if g["X"] in defs:
                raise UnreadableProblem(f"the {g['X']} are defined twice")
            defs[g["X"]] = (t.part, g["A"], g["B"])
            position[g["X"]], template[g["X"]] = p, t.name
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
                    tuple(i for i in range(len(quantities)) if i not in used)), tuple(template[x] for x in order)



# ---------------------------------------------------------------------------------------------------------------
# Oracles, for validation curves and analysis only: they read a task's hidden solution.
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
            elif re.fullmatch(NUMBER, t):
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
# Augmentation: the same problem with other numbers.
def renamed(task: MathTask, rng: random.Random, new_id: str, tries: int = 50):
    """(the problem with new numbers in the same sentences, strategy -> that strategy with the problem's numbers
    renamed alike or None), or None when no draw in `tries` works. The relations and the new answer come from the
    text alone (read_problem): what a dataset's worked solution gives. New numbers are drawn top-down from a new
    answer with the generator's rules (_fill), so every division stays exact and every value within its range; a
    distractor gets a fresh small number."""
    read = read_problem(task.problem)
    values = []

    def fill(ref, v):
        if ref[0] == "q":
            values[ref[1]] = v
            return 2 <= v <= LEAF_CAP["rate" if " per " in read.quantities[ref[1]].handle else "items"]
        op = read.ops[ref[1]]
        if not 2 <= v <= CAP["items"]:
            return False
        for _ in range(4):
            operands = _operands(rng, op.op, v)
            if operands is None:
                return False
            if fill(op.a, operands[0]) and fill(op.b, operands[1]):
                return True
        return False

    old = [q.value for q in read.quantities]
    for _ in range(tries):
        values = [rng.randint(2, 60) for _ in old]
        if not fill(("s", len(read.ops) - 1), rng.randint(2, max(6, min(2 * read.answer, 300)))) or values == old:
            continue
        numbers = iter(values)                 # the k-th number of the text is the k-th quantity (read_problem)
        try:
            new = read_problem(re.sub(r"\d+", lambda m: str(next(numbers)), task.problem))
        except UnreadableProblem:
            continue
        if [q.value for q in new.quantities] != values:
            continue
        # a number two quantities share cannot be told apart in a strategy: it is left out of the renaming
        rename = {str(v): n for v, n in zip(old, values) if old.count(v) == 1}
        return (MathTask(new_id, task.split, new.problem, new.answer, new.solution, new.quantities, new.ops,
                         new.distractors), lambda strategy: rename_numbers(strategy, rename))
    return None


# ---------------------------------------------------------------------------------------------------------------
# Prompts: the text the core and the teacher receive for a mathsim problem.
CORE_SYSTEM = ("You are a careful math assistant. Solve the word problem. Write your work one operation per line as "
               "'Step k: a op b = c' with op one of + - * /, then a final line '#### N' where N is the answer as a "
               "whole number. If a strategy is given, follow its steps in order.")
_TEACHER_FORMAT = ("You write strategies that a weaker model follows to solve a math word problem. Reply with exactly "
                   "one block in this format:\n<strategy>\n1. Multiply 3 by 6.\n2. Add 14 to the result of step 1.\n"
                   "</strategy>\nOne arithmetic operation per numbered step, on ")
_TEACHER_RULES = " or 'the result of step k'; the last step gives the answer. Do not state the final answer."
TEACHER_SYSTEM = _TEACHER_FORMAT + "numbers from the problem" + _TEACHER_RULES


def core_messages(problem: str, strategy: str | None) -> list:
    return chat_messages(CORE_SYSTEM, problem, strategy)


def teacher_messages(problem: str, name_quantities: bool = False) -> list:
    system = (_TEACHER_FORMAT + "the problem's quantities" + _TEACHER_RULES + " " + NAME_QUANTITIES if name_quantities
              else TEACHER_SYSTEM)
    return chat_messages(system, problem)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print seeded mathsim tasks as JSON lines.")
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
