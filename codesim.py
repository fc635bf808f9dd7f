"""codesim: the offline code world, list-processing functions described in plain English, graded by calling them.

1. Tasks: seeded list-processing functions described in English, one sentence per step (keep / drop by a predicate,
   map, sort, reverse, take / skip the first k, unique, zip-with ys, then optionally a reduction), with 0-2
   distractor sentences naming a step the function must not do. Splits as mathsim's: train / val / test i.i.d.,
   `ood` adds held-out phrasings and function names.
2. `read_codesim` inverts the text (the simulated core, sim_code.py, reads requests with it); ten hidden tests per
   task (the empty list, a negative number, duplicates, random lists) come from a reference implementation and are
   a pure function of the steps.
3. `parse_code_strategy` reads a codesim strategy as one primitive per step with its comprehension key, within the
   envelope and limits of strategy_format.free_text_steps; `canonical_code_strategy` writes the clearest one.
4. Grading: the tests are data, so a function is only called with the test arguments in the sandbox
   (sandbox.call_many) and its values are compared here (`codesim_verdicts`), with expected values that never enter
   the sandbox. `CodesimTask.code_task` is the same task as a CodeTask with pytest-style tests (code_bench.run_tests).
"""
import dataclasses
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import sandbox
import mathsim
from code_bench import CodeTask
from strategy_format import free_text_steps


# codesim (docs/world.md §6): list-processing functions described in plain English.
#
# A task is a pipeline of primitives over a list of integers: list -> list steps (keep / drop by a predicate, map,
# sort, reverse, take / skip the first k, unique, zip-with ys), optionally ending in a reduction (sum, product,
# max, min, count). Each step is one sentence; distractor sentences describe a step the function must NOT do.
CODESIM_SPLITS = mathsim.SPLITS   # mathsim's rule: train / val / test i.i.d.; ood adds held-out phrasings


@dataclass(frozen=True)
class Prim:
    kind: str             # keep drop map sort reverse take skip unique zip | sum product max min count
    sub: str = ""         # keep/drop: the predicate; map: the function; sort: asc/desc; zip: add/mul/max
    k: int | None = None  # the constant of gt/lt/div predicates, add/sub/mul maps, take/skip


REDUCERS = ("sum", "product", "max", "min", "count")
PRED_TEXT = {"even": "even numbers", "odd": "odd numbers", "pos": "positive numbers", "neg": "negative numbers",
             "nonzero": "non-zero numbers", "gt": "numbers greater than {k}", "lt": "numbers less than {k}",
             "div": "numbers divisible by {k}"}
PRED_CODE = {"even": "x % 2 == 0", "odd": "x % 2 != 0", "pos": "x > 0", "neg": "x < 0", "nonzero": "x != 0",
             "gt": "x > {k}", "lt": "x < {k}", "div": "x % {k} == 0"}
MAP_CODE = {"square": "x * x", "double": "2 * x", "negate": "-x", "abs": "abs(x)", "add": "x + {k}",
            "sub": "x - {k}", "mul": "x * {k}"}
ZIP_CODE = {"add": "a + b", "mul": "a * b", "max": "max(a, b)"}
ZIP_TEXT = {"add": "adding the two", "mul": "multiplying the two", "max": "taking the larger of the two"}
REDUCE_CODE = {"sum": "sum(result)", "product": "math.prod(result)", "max": "max(result, default=0)",
               "min": "min(result, default=0)", "count": "len(result)"}
REDUCE_TEXT = {"sum": "the sum of the elements", "product": "the product of the elements",
               "max": "the largest element, or 0 if there is none",
               "min": "the smallest element, or 0 if there is none",
               "count": "the number of elements", "": "the resulting list"}

# Verb phrases per primitive: (phrasings every split uses, phrasings only `ood` uses). {p}: a predicate phrase,
# {k}: the constant, {z}: a zip phrase. Map phrasings are per function.
PHRASES = {
    "keep": (["keep only the {p}", "filter the list down to the {p}"], ["retain just the {p}"]),
    "drop": (["remove the {p}", "drop the {p}"], ["throw away the {p}"]),
    "map:square": (["square every element", "replace each element by its square"],
                   ["raise each element to the power of two"]),
    "map:double": (["double every element", "replace each element by twice its value"],
                   ["make every element twice as large"]),
    "map:negate": (["negate every element", "flip the sign of every element"],
                   ["replace each element by its opposite"]),
    "map:abs": (["replace every element by its absolute value", "take the absolute value of every element"],
                ["strip the sign from every element"]),
    "map:add": (["add {k} to every element", "increase every element by {k}"], ["shift every element up by {k}"]),
    "map:sub": (["subtract {k} from every element", "decrease every element by {k}"],
                ["shift every element down by {k}"]),
    "map:mul": (["multiply every element by {k}", "scale every element by {k}"],
                ["make every element {k} times as large"]),
    "sort:asc": (["sort the list in ascending order", "sort the list from smallest to largest"],
                 ["put the elements in increasing order"]),
    "sort:desc": (["sort the list in descending order", "sort the list from largest to smallest"],
                  ["put the elements in decreasing order"]),
    "reverse": (["reverse the list", "reverse the order of the elements"], ["turn the list back to front"]),
    "take": (["keep only the first {k} elements", "take the first {k} elements"],
             ["cut the list after its first {k} elements"]),
    "skip": (["drop the first {k} elements", "skip the first {k} elements"], ["leave out the first {k} elements"]),
    "unique": (["remove repeated values, keeping the first occurrence of each",
                "drop duplicates, keeping the first occurrence of each value"],
               ["keep each distinct value once, at its first position"]),
    "zip": (["combine the list with ys element by element by {z}, stopping at the shorter list",
             "merge ys into the list position by position by {z}, stopping at the shorter list"],
            ["walk through the list and ys together and join each pair by {z}, stopping at the shorter list"]),
}
CONNECTIVES = (["", "Then ", "Next, ", "After that, "], ["Once that is done, ", "Following this, "])
FIRST_CONNECTIVES = (["", "First, "], ["To begin, "])
INTROS = (["Write a function {sig} that takes {args}.", "Implement {sig}, which takes {args}."],
          ["Create a Python function {sig} taking {args}."])
ENDINGS = (["Return {r}.", "The function returns {r}."], ["Give back {r}."])
DISTRACTORS = (["An older version of this function would also {vp}.", "Do not {vp}; other code does that."],
               ["A colleague suggested that the function {vp} as well, but that idea was dropped."])
FUNCTION_NAMES = (["process", "transform", "clean_values", "summarize", "pipeline", "reshape", "adjust_list",
                   "compute"], ["refine", "distill", "crunch"])


@dataclass(frozen=True)
class CodesimTask:
    family: ClassVar[str] = "codesim"
    id: str
    split: str
    problem: str
    name: str             # the function's name
    two_lists: bool       # f(xs, ys) when the pipeline zips with ys
    steps: tuple          # Prims in order; a reduction can only be last
    distractors: tuple    # Prims the text mentions but the function must not do
    tests: tuple          # ((args, expected), ...) from the reference implementation

    def to_json(self) -> dict:
        return {"family": "codesim", "id": self.id, "split": self.split, "problem": self.problem}

    @staticmethod
    def from_json(d: dict) -> "CodesimTask":
        """The text is invertible, so a record needs only its id, split and problem."""
        try:
            return dataclasses.replace(read_codesim(d["problem"]), id=d["id"], split=d["split"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a codesim task record ({type(e).__name__}: {e})") from None

    def code_task(self) -> CodeTask:
        """The CodeTask that grades completions (pytest-style tests, one per case)."""
        return CodeTask(self.id, "codesim", self.problem, self.name, codesim_test_code(self),
                        reference_source(self))


def _key(p: Prim) -> str:
    return f"{p.kind}:{p.sub}" if p.kind in ("map", "sort") else p.kind


def verb_phrase(p: Prim, phrasing: str) -> str:
    """The lower-case verb phrase of a list -> list primitive in the given phrasing."""
    return phrasing.format(p=PRED_TEXT.get(p.sub, "").format(k=p.k), k=p.k, z=ZIP_TEXT.get(p.sub, ""))


def _apply(p: Prim, xs: list, ys: list):
    """The reference semantics of one primitive (the hidden tests' expected values come from here)."""
    preds = {"even": lambda x: x % 2 == 0, "odd": lambda x: x % 2 != 0, "pos": lambda x: x > 0,
             "neg": lambda x: x < 0, "nonzero": lambda x: x != 0, "gt": lambda x: x > p.k,
             "lt": lambda x: x < p.k, "div": lambda x: x % p.k == 0}
    maps = {"square": lambda x: x * x, "double": lambda x: 2 * x, "negate": lambda x: -x, "abs": abs,
            "add": lambda x: x + p.k, "sub": lambda x: x - p.k, "mul": lambda x: x * p.k}
    if p.kind == "keep":
        return [x for x in xs if preds[p.sub](x)]
    if p.kind == "drop":
        return [x for x in xs if not preds[p.sub](x)]
    if p.kind == "map":
        return [maps[p.sub](x) for x in xs]
    if p.kind == "sort":
        return sorted(xs, reverse=p.sub == "desc")
    if p.kind == "reverse":
        return xs[::-1]
    if p.kind == "take":
        return xs[:p.k]
    if p.kind == "skip":
        return xs[p.k:]
    if p.kind == "unique":
        return [x for i, x in enumerate(xs) if x not in xs[:i]]
    if p.kind == "zip":
        return [{"add": a + b, "mul": a * b, "max": max(a, b)}[p.sub] for a, b in zip(xs, ys)]
    if p.kind == "sum":
        return sum(xs)
    if p.kind == "product":
        out = 1
        for x in xs:
            out *= x
        return out
    if p.kind in ("max", "min"):
        return (max if p.kind == "max" else min)(xs) if xs else 0
    if p.kind == "count":
        return len(xs)
    raise ValueError(f"unknown primitive {p}")


def reference_output(steps: tuple, xs: list, ys: list | None = None):
    value = list(xs)
    for p in steps:
        value = _apply(p, value, ys or [])
    return value


def render_function(name: str, two_lists: bool, steps: list) -> str:
    """Python source of a function doing `steps` in order; the simulated core writes its code with this too."""
    lines = [f"def {name}(xs{', ys' if two_lists else ''}):", "    result = list(xs)"]
    end = "result"
    for p in steps:
        if p.kind in REDUCE_CODE:
            end = REDUCE_CODE[p.kind]
            continue
        pred = PRED_CODE.get(p.sub, "").format(k=p.k)
        lines.append("    result = " + {
            "keep": f"[x for x in result if {pred}]",
            "drop": f"[x for x in result if not ({pred})]",
            "map": f"[{MAP_CODE.get(p.sub, '').format(k=p.k)} for x in result]",
            "sort": f"sorted(result{', reverse=True' if p.sub == 'desc' else ''})",
            "reverse": "result[::-1]",
            "take": f"result[:{p.k}]",
            "skip": f"result[{p.k}:]",
            "unique": "list(dict.fromkeys(result))",
            "zip": f"[{ZIP_CODE.get(p.sub, '')} for a, b in zip(result, ys)]"}[p.kind])
    return "import math\n\n\n" + "\n".join(lines + [f"    return {end}"]) + "\n"


def reference_source(task: CodesimTask) -> str:
    return render_function(task.name, task.two_lists, list(task.steps))


def codesim_test_code(task: CodesimTask) -> str:
    lines = [f"from solution import {task.name}", ""]
    for i, (args, expected) in enumerate(task.tests):
        call = ", ".join(repr(a) for a in args)
        lines += ["", f"def test_case_{i}():", f"    assert {task.name}({call}) == {expected!r}"]
    return "\n".join(lines) + "\n"


def _random_prim(rng: random.Random, two_lists_ok: bool, allow_zip: bool = True) -> Prim:
    kinds = ["keep", "keep", "drop", "map", "map", "sort", "reverse", "take", "skip", "unique"]
    kind = rng.choice(kinds + (["zip", "zip"] if allow_zip and two_lists_ok else []))
    if kind in ("keep", "drop"):
        sub = rng.choice(list(PRED_TEXT))
        k = {"gt": rng.randint(-3, 4), "lt": rng.randint(-3, 4), "div": rng.randint(3, 5)}.get(sub)
        return Prim(kind, sub, k)
    if kind == "map":
        sub = rng.choice(list(MAP_CODE))
        k = {"add": rng.randint(1, 5), "sub": rng.randint(1, 5), "mul": rng.randint(3, 5)}.get(sub)
        return Prim(kind, sub, k)
    if kind == "sort":
        return Prim(kind, rng.choice(["asc", "desc"]))
    if kind in ("take", "skip"):
        return Prim(kind, "", rng.randint(1, 4))
    if kind == "zip":
        return Prim(kind, rng.choice(list(ZIP_CODE)))
    return Prim(kind)


def hidden_tests(steps: tuple, two_lists: bool) -> tuple:
    """Ten ((args), expected) cases, a pure function of the pipeline (so the reader recomputes them): the empty
    list, one negative number, duplicates with negatives and zero, then seven random lists."""
    rng = random.Random("codesim-tests/" + repr((steps, two_lists)))
    return tuple((args, reference_output(steps, *args)) for args in _test_inputs(rng, two_lists))


def _test_inputs(rng: random.Random, two_lists: bool) -> list:
    lists = [[], [-rng.randint(1, 9)], [3, -2, 3, 0, -2, 5, 3]]
    lists += [[rng.randint(-9, 9) for _ in range(rng.randint(2, 9))] for _ in range(7)]
    if not two_lists:
        return [(xs,) for xs in lists]
    return [(xs, [rng.randint(-9, 9) for _ in range(rng.randint(1 if not xs else 0, 9))]) for xs in lists]


def _make_codesim(rng: random.Random, split: str, task_id: str) -> CodesimTask:
    ood = split == "ood"

    def pick(options: tuple) -> str:
        return rng.choice(options[0] + (options[1] if ood else []))

    while True:
        n_steps, n_distractors = rng.randint(2, 6), rng.randint(0, 2)
        reduce = rng.random() < 0.5
        steps = []
        while len(steps) < n_steps - reduce:
            p = _random_prim(rng, True, allow_zip=not any(s.kind == "zip" for s in steps))
            if not steps or _key(p) != _key(steps[-1]):
                steps.append(p)
        if reduce:
            steps.append(Prim(rng.choice(REDUCERS)))
        two_lists = any(p.kind == "zip" for p in steps)
        distractors = []
        while len(distractors) < n_distractors:
            p = _random_prim(rng, False)
            if p not in steps and p not in distractors:
                distractors.append(p)
        tests = hidden_tests(tuple(steps), two_lists)
        # A pipeline whose output hardly depends on its input (everything filtered away, say) tests nothing.
        if len({repr(out) for _, out in tests}) >= 6:
            break
    name = pick(FUNCTION_NAMES)
    sig = f"{name}(xs, ys)" if two_lists else f"{name}(xs)"
    args = "two lists of integers, xs and ys" if two_lists else "a list of integers xs"
    sentences = [pick(INTROS).format(sig=sig, args=args)]
    for i, p in enumerate(s for s in steps if s.kind not in REDUCERS):
        vp = verb_phrase(p, pick(PHRASES[_key(p)]))
        connective = pick(FIRST_CONNECTIVES if i == 0 else CONNECTIVES)
        sentences.append((connective + vp)[0].upper() + (connective + vp)[1:] + ".")
    marks = [None] * len(sentences)            # which sentence states which distractor
    for p in distractors:
        at = rng.randint(1, len(sentences))
        sentences.insert(at, pick(DISTRACTORS).format(vp=verb_phrase(p, pick(PHRASES[_key(p)]))))
        marks.insert(at, p)
    distractors = [p for p in marks if p is not None]
    last = steps[-1].kind if steps[-1].kind in REDUCERS else ""
    sentences.append(pick(ENDINGS).format(r=REDUCE_TEXT[last]))
    return CodesimTask(task_id, split, " ".join(sentences), name, two_lists, tuple(steps), tuple(distractors), tests)


def generate_codesim(n: int, seed: int, split: str) -> list:
    """n codesim tasks, a pure function of (n, seed, split); task i depends only on (seed, split, i)."""
    if split not in CODESIM_SPLITS:
        raise ValueError(f"split must be one of {', '.join(CODESIM_SPLITS)}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_make_codesim(random.Random(f"codesim/{split}/{seed}/{i}"), split, f"codesim-{split}-{seed}-{i}")
            for i in range(n)]


# The reader: regexes from the same phrase tables, so generator and reader cannot drift apart.
_PRED_RE = "|".join(re.escape(t).replace(r"\{k\}", r"(-?\d+)") for t in PRED_TEXT.values())


def _phrase_regex(phrasing: str) -> str:
    out = re.escape(phrasing)
    out = out.replace(r"\{p\}", f"(?P<p>{_PRED_RE})").replace(r"\{k\}", r"(?P<k>-?\d+)")
    return out.replace(r"\{z\}", "(?P<z>" + "|".join(map(re.escape, ZIP_TEXT.values())) + ")")


_VP_RE = [(key, phrasing, re.compile(_phrase_regex(phrasing)))
          for key, (common, held) in PHRASES.items() for phrasing in common + held]


def _read_vp(text: str) -> Prim | None:
    """The primitive a verb phrase names, or None."""
    hits = []
    for key, _, rx in _VP_RE:
        m = rx.fullmatch(text)
        if m:
            kind, _, sub = key.partition(":")
            g = m.groupdict()
            if g.get("p") is not None:
                pred = next(s for s, t in PRED_TEXT.items()
                            if re.fullmatch(re.escape(t).replace(r"\{k\}", r"-?\d+"), g["p"]))
                k = re.search(r"-?\d+", g["p"])
                hits.append(Prim(kind, pred, int(k.group(0)) if k else None))
            elif g.get("z") is not None:
                hits.append(Prim(kind, next(s for s, t in ZIP_TEXT.items() if t == g["z"])))
            else:
                hits.append(Prim(kind, sub, int(g["k"]) if g.get("k") is not None else None))
    if len(set(hits)) > 1:
        raise UnreadableCode(f"ambiguous step: {text!r}")
    return hits[0] if hits else None


class UnreadableCode(mathsim.UnreadableProblem):
    """The text is not a codesim problem the reader can understand exactly (sim_core answers it with HTTP 400)."""


def _forms_regexes(forms: tuple, slot: str, inner: str) -> list:
    return [re.compile(re.escape(f).replace(re.escape("{" + slot + "}"), inner)) for f in forms[0] + forms[1]]


def _match_any(regexes: list, text: str):
    return next((m for rx in regexes if (m := rx.fullmatch(text))), None)


_CONNECTIVE_RE = re.compile("(?:" + "|".join(re.escape(c) for c in
                                             sorted(set(sum(CONNECTIVES + FIRST_CONNECTIVES, [])) - {""}))
                            + r")?(?P<vp>.+)\.")
_INTRO_RES = [re.compile(re.escape(f).replace(r"\{sig\}", r"(?P<name>[a-z_]+)\((?P<sig>xs|xs, ys)\)")
                         .replace(r"\{args\}", "(?:a list of integers xs|two lists of integers, xs and ys)"))
              for f in INTROS[0] + INTROS[1]]
_ENDING_RES = _forms_regexes(ENDINGS, "r", "(?P<r>.+)")
_DISTRACTOR_RES = _forms_regexes(DISTRACTORS, "vp", "(?P<vp>.+)")


@lru_cache(maxsize=8192)
def shows_held_out(problem: str) -> bool:
    """Does a problem show a phrasing or function name that only the `ood` split uses? An oracle for reporting
    (what a guide declines on held-out phrasings), never a feature of the recipe."""
    held = [h for _, (_, hs) in PHRASES.items() for h in hs]
    if any(re.search(_phrase_regex(h), problem) for h in held):
        return True
    texts = sum((forms[1] for forms in (CONNECTIVES, FIRST_CONNECTIVES)), [])
    if any(c.strip() and c.strip() in problem for c in texts):
        return True
    fixed = sum((forms[1] for forms in (INTROS, ENDINGS, DISTRACTORS)), [])
    if any(re.search(re.escape(f.split("{")[0]), problem) for f in fixed):
        return True
    return any(re.search(rf"\b{name}\(", problem) for name in FUNCTION_NAMES[1])


def read_codesim(problem: str) -> CodesimTask:
    """The inverse of the generator: the task (id and split empty) from the problem text alone (cached: the
    simulated core reads the same problems again and again)."""
    if not isinstance(problem, str) or not problem.strip():
        raise UnreadableCode("the problem text is empty")
    sentences = re.split(r"(?<=\.)\s+", problem.strip())
    intro = _match_any(_INTRO_RES, sentences[0])
    if intro is None:
        raise UnreadableCode(f"sentence 1 does not introduce a function: {sentences[0][:80]!r}")
    name, two_lists = intro.group("name"), intro.group("sig") == "xs, ys"
    ending = _match_any(_ENDING_RES, sentences[-1]) if len(sentences) > 1 else None
    last = next((r for r, t in REDUCE_TEXT.items() if ending and t == ending.group("r")), None)
    if last is None:
        raise UnreadableCode(f"the last sentence does not say what to return: {sentences[-1][:80]!r}")
    steps, distractors = [], []
    for n, sentence in enumerate(sentences[1:-1], 2):
        m = _match_any(_DISTRACTOR_RES, sentence)
        if m and (p := _read_vp(m.group("vp"))) is not None:
            distractors.append(p)
            continue
        m = _CONNECTIVE_RE.fullmatch(sentence)
        p = _read_vp(m.group("vp")[0].lower() + m.group("vp")[1:]) if m else None
        if p is None:
            raise UnreadableCode(f"sentence {n} is not a step the reader knows: {sentence[:80]!r}")
        steps.append(p)
    if last:
        steps.append(Prim(last))
    if not steps or (any(p.kind == "zip" for p in steps) != two_lists):
        raise UnreadableCode("the steps do not fit the function's signature")
    tests = hidden_tests(tuple(steps), two_lists)
    return CodesimTask("", "", problem, name, two_lists, tuple(steps), tuple(distractors), tests)


# ---------------------------------------------------------------------------------------------------------------
# codesim strategies: one primitive per step, in the envelope and limits of free_text_steps. Each step is read as a
# comprehension key of docs/world.md §6 (what the cheap core understands how well) and the primitive it asks for.
@dataclass(frozen=True)
class CodeStep:
    index: int                  # 1-based
    key: str | None             # comprehension key ("Keep/Filter", ...); None: no verb of the lexicon
    prim: Prim | None           # the primitive a faithful reader writes; None: the step is unclear (no operand)
    filler_words: int           # words beyond the step's canonical wording


_STEP_PREDICATES = [
    ("even", r"\bevens?\b"), ("odd", r"\bodds?\b"), ("nonzero", r"\bnon-?zero\b"), ("pos", r"\bpositive\b"),
    ("neg", r"\bnegative\b"), ("gt", r"\b(?:greater|larger|bigger|more) than (-?\d+)|\babove (-?\d+)"),
    ("lt", r"\b(?:less|smaller|fewer) than (-?\d+)|\bbelow (-?\d+)"),
    ("div", r"\bdivisible by (\d+)|\bmultiples of (\d+)")]
_STEP_MAPS = [("add", r"\b(?:add(?:ing)?|plus)\s+(\d+)|\+\s*(\d+)"),
              ("sub", r"\b(?:subtract(?:ing)?|minus)\s+(\d+)|-\s*(\d+)\b"),
              ("mul", r"\b(?:multiply(?:ing)?(?: \w+)? by|times)\s+(\d+)|\*\s*(\d+)"),
              ("square", r"\bsquar(?:e|es|ing)\b"), ("double", r"\bdoubl(?:e|es|ing)\b|\btwice\b"),
              ("negate", r"\bnegat(?:e|es|ing)\b|\bopposite\b"), ("abs", r"\babsolute\b")]
_STEP_ZIPS = [("add", r"\badd|\bplus\b|\bsum\b|\+"), ("mul", r"\bmultipl|\bproduct\b|\btimes\b|\*"),
              ("max", r"\bmax|\blarger\b|\bbigger\b|\bgreater\b")]
_DESC = r"\bdescending\b|\bdecreasing\b|\blargest to smallest\b|\bhighest to lowest\b|\breverse order\b"


def _operand(table: list, text: str):
    """(name, k) of the first table entry found in text, or None."""
    for name, rx in table:
        m = re.search(rx, text, re.I)
        if m:
            k = next((int(g) for g in m.groups() if g is not None), None)
            return name, k
    return None


def _read_step(text: str) -> tuple:
    """(key, prim) of one strategy step; prim None when the verb is known but its operand is missing."""
    t = text.strip()
    m = re.search(r"\b(take|keep|skip|drop|remove)\b(?:\s+only)?\s+the\s+first\s+(\d+)\b", t, re.I)
    if m:
        kind = "take" if m.group(1).lower() in ("take", "keep") else "skip"
        return "Take/Skip first k", Prim(kind, "", int(m.group(2)))
    if re.search(r"\bduplicates?\b|\bunique\b|\bdistinct\b", t, re.I):
        return "Unique", Prim("unique")
    verbs = [(m.start(), m.group(1).lower()) for m in re.finditer(
        r"\b(keep|filter|drop|remove|map|apply|square|double|negate|sort|reverse|zip|sum|product|max|maximum|min|"
        r"minimum|count)\b", t, re.I)]
    if not verbs:
        return None, None
    verb, rest = verbs[0][1], t[verbs[0][0]:]
    if verb in ("keep", "filter", "drop", "remove"):
        found = _operand(_STEP_PREDICATES, rest)
        kind, key = ("keep", "Keep/Filter") if verb in ("keep", "filter") else ("drop", "Drop/Remove")
        return key, (Prim(kind, found[0], found[1]) if found else None)
    if verb in ("map", "apply"):
        found = _operand(_STEP_MAPS, rest)
        return "Map/Apply", (Prim("map", found[0], found[1]) if found else None)
    if verb in ("square", "double", "negate"):
        return "Square/Double/Negate", Prim("map", verb)
    if verb == "sort":
        if re.search(_DESC, rest, re.I):
            return "Sort descending", Prim("sort", "desc")
        return "Sort", Prim("sort", "asc")
    if verb == "reverse":
        return "Reverse", Prim("reverse")
    if verb == "zip":
        found = _operand(_STEP_ZIPS, rest[3:])
        return "Zip-with", (Prim("zip", found[0]) if found else None)
    if verb in ("sum", "product"):
        return "Sum/Product", Prim(verb)
    if verb in ("max", "maximum", "min", "minimum"):
        return "Max/Min", Prim(verb[:3])
    return "Count", Prim("count")


def canonical_step(p: Prim) -> str:
    """The clearest wording of one primitive as a strategy step."""
    if p.kind in ("keep", "drop"):
        return f"{'Keep' if p.kind == 'keep' else 'Remove'} the {PRED_TEXT[p.sub].format(k=p.k)}."
    if p.kind == "map":
        return {"square": "Square each element.", "double": "Double each element.", "negate": "Negate each element.",
                "abs": "Map each element to its absolute value.", "add": f"Map each element by adding {p.k}.",
                "sub": f"Map each element by subtracting {p.k}.",
                "mul": f"Map each element by multiplying it by {p.k}."}[p.sub]
    if p.kind == "sort":
        return "Sort ascending." if p.sub == "asc" else "Sort descending."
    if p.kind in ("take", "skip"):
        return f"{p.kind.capitalize()} the first {p.k} elements."
    return {"reverse": "Reverse the list.", "unique": "Remove duplicates, keeping first occurrences.",
            "zip": f"Zip with ys by {ZIP_TEXT.get(p.sub, '')}.", "sum": "Sum the elements.",
            "product": "Product of the elements.", "max": "Max of the elements, or 0 if empty.",
            "min": "Min of the elements, or 0 if empty.", "count": "Count the elements."}[p.kind]


def canonical_code_strategy(task: CodesimTask) -> str:
    lines = [f"{i}. {canonical_step(p)}" for i, p in enumerate(task.steps, 1)]
    return "<strategy>\n" + "\n".join(lines) + "\n</strategy>"


def parse_code_strategy(text: str) -> tuple:
    """(steps, None) for a valid codesim strategy, else ([], reason): the envelope and limits of free_text_steps,
    each step read as a CodeStep. A step with no known verb is still valid (key None), as in
    strategy_format.parse_strategy."""
    raw, error = free_text_steps(text)
    if error:
        return [], error
    steps = []
    for i, line in enumerate(raw, 1):
        key, prim = _read_step(line)
        canonical = len(canonical_step(prim).split()) if prim else 0
        steps.append(CodeStep(i, key, prim, max(0, len(line.split()) - canonical)))
    return steps, None


def is_codesim_problem(text: str) -> bool:
    """Whether a problem text opens like a codesim task (then read_codesim must read all of it)."""
    first = re.split(r"(?<=\.)\s+", (text or "").strip(), maxsplit=1)[0]
    return _match_any(_INTRO_RES, first) is not None


def _returned(reply, expected) -> bool:
    """Whether one reply of sandbox.call_many is a return value equal to `expected` (plain data on both sides)."""
    if not isinstance(reply, dict) or "value" not in reply:
        return False
    try:
        return sandbox.decode(reply["value"]) == expected
    except sandbox.NotPlain:
        return False


def codesim_verdicts(task_list: list, codes: list, workers: int | None = None, desc: str | None = None,
                     per_function_s: int = 5) -> list:
    """Whether codes[i] passes the hidden tests of task_list[i] (codesim tasks). Each distinct function is called
    alone in the sandbox with the tests' arguments; its values are compared here with the expected ones."""
    if len(task_list) != len(codes):
        raise ValueError(f"{len(task_list)} tasks but {len(codes)} codes")
    distinct = {}
    for task, code in zip(task_list, codes):
        distinct.setdefault((task.problem, code), task)
    keys = list(distinct)
    jobs = [{"source": code, "name": distinct[(problem, code)].name,
             "calls": [list(args) for args, _ in distinct[(problem, code)].tests]} for problem, code in keys]
    replies = sandbox.call_many(jobs, per_function_s, workers=workers, desc=desc)
    verdicts = {k: r is not None and len(r) == len(distinct[k].tests)
                and all(_returned(reply, expected) for reply, (_, expected) in zip(r, distinct[k].tests))
                for k, r in zip(keys, replies)}
    return [verdicts[(t.problem, c)] for t, c in zip(task_list, codes)]
