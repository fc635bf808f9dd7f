"""Task family `gsm8k`: the real benchmark (docs/world.md §1), for a real core.

1. `load` reads GSM8K's own files from a directory (train.jsonl and test.jsonl, one {"question", "answer"} object a
   line, the answer's last line "#### N") into `GSM8KTask`s; val is carved from train with a fixed seed.
2. Strategies are free text in the shared <strategy> envelope, so the reward, acceptance sampling and the table work
   unchanged; only the validity rule (`parse_strategy`: strategy_format's free-text rule, and no code block), the
   answer reader (`extract_answer`) and the prompts differ. A strategy leaks as a mathsim one does (`leaks`).
"""
import json
import os
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import strategy_format

FILES = {"train": "train.jsonl", "test": "test.jsonl"}


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


def load(data_dir: str, n_val: int = 200, seed: int = 0) -> dict:
    """{"train", "val", "test": [GSM8KTask]}: the test file as is, val = n_val train problems drawn with seed."""
    train = _gsm8k_file(os.path.join(data_dir, FILES["train"]), "train")
    test = _gsm8k_file(os.path.join(data_dir, FILES["test"]), "test")
    if not 0 <= n_val < len(train):
        raise ValueError(f"n_val must be in 0..{len(train) - 1} (GSM8K train has {len(train)} problems), got {n_val}")
    val_ids = set(random.Random(seed).sample(range(len(train)), n_val))
    val = [GSM8KTask(t.id, "val", t.problem, t.answer, t.solution) for i, t in enumerate(train) if i in val_ids]
    return {"train": [t for i, t in enumerate(train) if i not in val_ids], "val": val, "test": test}



def parse_strategy(text: str) -> strategy_format.ParsedStrategy:
    """The steps (as text) of the first <strategy> block, or why it is invalid: strategy_format.free_text_steps (both
    tags, 1 to 12 numbered steps of 1 to 60 words; an unnumbered line continues the step above it), and no code
    block (a ``` fence)."""
    steps, error = strategy_format.free_text_steps(text, code_fence_invalid=True)
    return strategy_format.ParsedStrategy(steps=steps, error=error)


leaks = strategy_format.leaks    # the same rule: the answer stated as a number the problem does not contain


_NUMBER = r"-?(?:\\?\$)?\s*\d[\d,]*(?:\.\d+)?"       # -12, $1,234.50, \$18 (LaTeX)


def extract_answer(reply: str):
    """The reply's final answer as an int (or a Fraction when not whole), None when it has none. The last marked
    answer wins: "#### N", then "\\boxed{N}", then "the answer is N"; else the last number in the reply. Dollar
    signs, thousands commas, a trailing period and a trailing ".00" are ignored."""
    reply = reply or ""
    for marker in (r"####\s*", r"\\boxed\{\s*", r"\banswer\s*(?:is|:)[\s*:]*"):
        found = re.findall(marker + f"({_NUMBER})", reply, re.I)
        if found:
            break
    else:
        found = re.findall(_NUMBER, reply)
    if not found:
        return None
    value = Fraction(re.sub(r"[\\$,\s]", "", found[-1]))
    return int(value) if value.denominator == 1 else value


CORE_SYSTEM = ("Solve the grade-school math problem. Think step by step, then end with a final line '#### N' where N "
               "is the answer as a number. If a strategy is given, follow its steps in order.")
TEACHER_SYSTEM = ("You write strategies that a weaker model follows to solve a grade-school math problem. Reply with "
                  "exactly one block:\n<strategy>\n1. <first step>\n2. <next step>\n</strategy>\nBetween 1 and "
                  f"{strategy_format.MAX_FREE_STEPS} numbered steps, each one short instruction of at most "
                  f"{strategy_format.MAX_STEP_WORDS} words saying which quantities to combine and how. No code. Do "
                  "not compute or state the final answer.")
GUIDE_SYSTEM = ("Write a numbered plan that another model will follow to solve the math problem, inside <strategy> "
                "and </strategy>. Do not state the final answer.")


def guide_messages(problem: str) -> list:
    """The guide's input; a pretrained chat guide sees it through its chat template."""
    return strategy_format.chat_messages(GUIDE_SYSTEM, problem)


def core_messages(problem: str, strategy: str | None) -> list:
    return strategy_format.chat_messages(CORE_SYSTEM, problem, strategy)


def teacher_messages(problem: str, name_quantities: bool = False) -> list:
    system = TEACHER_SYSTEM + (" " + strategy_format.NAME_QUANTITIES if name_quantities else "")
    return strategy_format.chat_messages(system, problem)


def guide_prompt(problem: str) -> str:
    """The guide's input as plain text, for a guide without a chat format (a from-scratch or base model)."""
    return f"{GUIDE_SYSTEM}\n\n{strategy_format.guide_prompt(problem)}"


def training_text(task: GSM8KTask):
    """Text for a from-scratch guide's tokenizer: its prompt and GSM8K's worked solution (no strategies exist yet)."""
    yield guide_prompt(task.problem)
    yield task.solution
