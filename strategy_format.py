"""The strategy format every task family shares, and the request shape that carries a problem and its strategy.

1. The envelope (docs/world.md §3): a strategy is the first `<strategy>` ... `</strategy>` block of a text
   (`extract_strategy`; the guide's generation stops at `STOP`), its steps numbered 1, 2, 3 ... (`numbered_steps`).
   `strategy_envelope` writes one, with the format faults a simulated teacher makes.
2. Free text (gsm8k, codesim, kodcode, humaneval): `free_text_steps` is the one rule, 1 to MAX_FREE_STEPS steps of
   1 to MAX_STEP_WORDS words each.
3. mathsim's verb grammar (docs/world.md §3): `parse_strategy` reads a strategy with the verb forms `VERBS` and returns
   its steps or the reason it is invalid; `grammar_text` spells the grammar out for a from-scratch guide's tokenizer.
4. What a math strategy or reply says: `leaks` (the answer stated as a number the problem does not contain; mathsim
   and gsm8k), `extract_answer` (the number after '####'), `numbers_named`, and `deferred` with `UNCLEAR_NOTE` (the
   strategy left the work to the core).
5. Declining (`DECLINE`, `declines`): a guide that cannot help writes the envelope around `DECLINE_TEXT` instead of
   steps, and the recipe then sends the core-alone request (execute.run_strategies), which any core already answers.
6. The request shape of every family: the guide's plain prompt (`guide_prompt`); "Problem: ..." then "Strategy: ..."
   in a core's or a teacher's user message (`chat_messages`), read back by `parse_core_request` and
   `parse_teacher_request`; and the teacher's naming instruction `NAME_QUANTITIES`.
"""
import re
from dataclasses import dataclass, field
from fractions import Fraction

STOP = "</strategy>"            # the guide's completion ends at the envelope's closing tag (or at its EOS token)
MAX_FREE_STEPS, MAX_STEP_WORDS = 12, 60     # the free-text rule (docs/world.md §3)
NUMBER = r"\d[\d,]*(?:\.\d+)?"


@dataclass
class ParsedStrategy:
    steps: list = field(default_factory=list)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------------------------
# The envelope, and the free-text rule.
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


def free_text_steps(text, code_fence_invalid: bool = False) -> tuple:
    """(steps, None) for a valid free-text strategy, else ([], reason): the envelope of numbered_steps (with
    code_fence_invalid, a ``` fence inside the block makes it invalid too), then 1 to MAX_FREE_STEPS steps, each
    non-empty and at most MAX_STEP_WORDS words. The one rule of gsm8k, codesim, kodcode and humaneval."""
    steps, error = numbered_steps(text, code_fence_invalid)
    if error:
        return [], error
    if not steps:
        return [], "no numbered steps inside the <strategy> block"
    if len(steps) > MAX_FREE_STEPS:
        return [], f"{len(steps)} steps, more than {MAX_FREE_STEPS}"
    for i, step in enumerate(steps, 1):
        words = len(step.split())
        if words == 0:
            return [], f"step {i} is empty"
        if words > MAX_STEP_WORDS:
            return [], f"step {i} has {words} words, more than {MAX_STEP_WORDS}"
    return steps, None


# ---------------------------------------------------------------------------------------------------------------
# mathsim's verb grammar (docs/world.md §3). A step is "<verb form with operands {a} and {b}>", e.g.
# "Subtract {a} from {b}" (b - a).
@dataclass(frozen=True)
class VerbForm:
    key: str         # the lexicon entry of docs/world.md §3-4, e.g. "Increase … by"
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
# An operand that is a number, a step reference or a pronoun ends there; what follows is filler.
_CLOSED = re.compile(rf"(?:the (?:result|answer|value) (?:of|from) step \d+|step \d+|that result|this result|"
                     rf"the previous result|the last result|it|that|this|\$?{NUMBER})(?!\w)", re.I)
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


# ---------------------------------------------------------------------------------------------------------------
# What a math strategy or reply says.
def _numbers(text: str) -> list:
    return [Fraction(s.replace(",", "")) for s in re.findall(NUMBER, text)]


def leaks(strategy: str, problem: str, answer: int) -> bool:
    """True when the strategy states the answer as a number the problem does not contain (step numbers and
    "step k" references do not count)."""
    text = re.sub(r"(?m)^\s*\d+[.)](?!\d)", " ", strategy or "")
    text = re.sub(r"(?i)\bsteps?\s+\d+", " ", text)
    return answer in _numbers(text) and answer not in _numbers(problem)


def extract_answer(reply: str) -> int | None:
    """The number after the last "####", else the last number in the reply; None if absent or not whole."""
    marked = re.findall(rf"####\s*\$?\s*(-?{NUMBER})", reply or "")
    found = marked or re.findall(rf"-?{NUMBER}", reply or "")
    if not found:
        return None
    value = Fraction(found[-1].replace(",", ""))
    return int(value) if value.denominator == 1 else None


# A guide's way to say it has no strategy worth following: the recipe sends the core-alone request instead.
DECLINE_TEXT = "No strategy: solve it alone."
DECLINE = f"<strategy>\n{DECLINE_TEXT}\n</strategy>"


def declines(strategy: str | None) -> bool:
    """Is this the guide's decline (the envelope around DECLINE_TEXT, nothing else inside), not a strategy?"""
    block = extract_strategy(strategy or "")
    return block is not None and " ".join(block[len("<strategy>"):-len(STOP)].split()) == DECLINE_TEXT


# What the simulated core writes when it abandons a strategy at an unclear step and solves the rest alone.
UNCLEAR_NOTE = "of the strategy is unclear, so I solve the rest myself."


def deferred(valid: bool, reply_text: str | None) -> bool:
    """Did the strategy leave the work to the core: invalid (the core ignores it) or abandoned at an unclear step
    (the simulated core says so; a real core's reply carries no such note, so there only invalid counts)?"""
    return not valid or (reply_text is not None and UNCLEAR_NOTE in reply_text)


_STEP_NUMBER = re.compile(r"(?m)^(\s*\d+[.)])?(.*)$")     # a line: its step number, then its body
_OPERAND_NUMBER = re.compile(r"(?<!step )(?<![\w.])\d[\d,]*(?:\.\d+)?", re.I)   # not "step k", not in a word


def numbers_named(strategy: str) -> int:
    """How many operands of a strategy are numbers (step numbers and "step k" references aside): each one the guide
    had to look up in the problem rather than copy its phrase."""
    return sum(len(_OPERAND_NUMBER.findall(m.group(2))) for m in _STEP_NUMBER.finditer(strategy))


def rename_numbers(strategy: str, rename: dict) -> str | None:
    """The strategy with every number it names (as numbers_named counts them) replaced by rename[number]; None when
    one is not in rename (so the strategy cannot be carried over to the renamed problem)."""
    missing = []

    def swap(m):
        new = rename.get(m.group(0).replace(",", ""))
        missing.extend([m.group(0)] if new is None else [])
        return m.group(0) if new is None else str(new)

    out = _STEP_NUMBER.sub(lambda m: (m.group(1) or "") + _OPERAND_NUMBER.sub(swap, m.group(2)), strategy)
    return None if missing else out


def grammar_text() -> str:
    """The strategy grammar's own words, as one strategy per verb form: what a from-scratch guide's tokenizer learns
    besides the problems (it never sees a task's canonical strategy, an oracle)."""
    forms = [f for forms in VERBS.values() for f in forms]
    lines = [f"{k}. {f.pattern.format(a='the result of step 1', b='the result of step 2')}."
             for k, f in enumerate(forms, 1)]
    return "<strategy>\n" + "\n".join(lines) + "\n</strategy>"


# ---------------------------------------------------------------------------------------------------------------
# The request shape every family shares.
# The teacher's naming instruction (docs/world.md §5): a quantity named by the problem's own phrase is copied by the
# guide far more easily than a number it must look up. The simulated teacher reacts to this exact sentence.
NAME_QUANTITIES = "Name each given quantity as the problem names it."
_PROBLEM, _STRATEGY = "Problem: ", "\n\nStrategy:\n"


def guide_prompt(problem: str) -> str:
    """The guide's input as plain text (a from-scratch guide; mathsim's and codesim's chat guides too)."""
    return f"{_PROBLEM}{problem}\nStrategy:\n"


def chat_messages(system: str, problem: str, strategy: str | None = None) -> list:
    """The system message, then the user message "Problem: ..." (with "Strategy: ..." when a strategy is given): the
    shape of every family's core and teacher requests (and a chat guide's), so parse_core_request reads them all."""
    user = _PROBLEM + problem + ("" if strategy is None else _STRATEGY + strategy)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


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
    """(problem, strategy or None) from a core request (chat_messages' shape)."""
    text = _user_text(messages)
    problem, sep, strategy = text.partition(_STRATEGY)
    return problem, (strategy if sep else None)


def parse_teacher_request(messages) -> str:
    return _user_text(messages).partition(_STRATEGY)[0]

