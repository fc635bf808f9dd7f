"""Task families: what the recipe needs from each one, in one place, and the guide's prompt for all of them.

1. `mathsim` (mathsim.py, docs/world.md §2): synthetic word problems; a reply is graded by the number after '####'.
2. `gsm8k` (gsm8k.py, docs/world.md §1): the real benchmark, for a real core; graded the same way, free-text
   strategies.
3. `codesim` (codesim.py, docs/world.md §6): list-processing functions described in English; a reply is graded by
   running the function it contains against the task's hidden tests in the sandbox (never by the simulator's
   knowledge), one sandbox program per task for a whole batch of replies.
4. `kodcode` and `humaneval` (code_bench.py, docs/world.md §1): real code benchmarks, for a real core. Free-text
   strategies; a reply's code is run with the benchmark's own tests in the sandbox. Neither has a training split:
   the guide trains on the user's KodCode file, and `humaneval` tests on HumanEval's 164 problems.
`family_of(task)` reads the family a task names, so every stage prompts and grades a task by its own rules.
The stages never branch on a family's name: what differs is a field of `Family`.
"""
import random
from dataclasses import dataclass
from typing import Any, Callable

import code_bench
import codesim
import gsm8k
import mathsim
import sim_code
import sim_math
import strategy_format


Task = Any          # a family's task: mathsim.Task, codesim.CodeTask, gsm8k's and code_bench's task types
Messages = list[dict]   # chat messages: [{"role": ..., "content": ...}]


@dataclass(frozen=True)
class Family:
    name: str
    task_from_json: Callable[[dict], Task]
    guide_prompt: Callable[[str], str]                 # problem -> text (a guide without a chat format)
    guide_messages: Callable[[str], Messages]          # problem -> messages (a pretrained chat guide's template)
    core_messages: Callable[[str, str | None], Messages]   # (problem, strategy or None: the core alone)
    teacher_messages: Callable[[str, bool], Messages]  # (problem, name_quantities: the naming instruction)
    parse_strategy: Callable[[str], strategy_format.ParsedStrategy]
    leaks: Callable[[str, Task], bool]                 # does the strategy state the answer
    grade: Callable[[list[Task], list[str]], list[bool]]   # is each reply a correct solution of its task
    tokenizer_text: Callable[[Task], list[str]]        # what a from-scratch guide's tokenizer trains on
    generate: Callable[[int, int, str, int], list[Task]] | None = None   # (n, seed, split, level): an offline world
    load: Callable[[str, int, int, int], dict[str, list[Task]]] | None = None   # (data_dir, n_val, n_test, seed)
                                                                                # -> a benchmark's splits
    data_dir: str | None = None  # where `load` looks by default
    # Oracles of an offline world, for validation curves only (None for a real benchmark): the task's clearest
    # strategy (SFT's val loss), whether a strategy is the task's plan, the cheap core's chance of success with it.
    canonical_strategy: Callable[[Task], str] | None = None
    plan_matches: Callable[[Task, str], bool] | None = None
    exact_success: Callable[[Task, str | None], float] | None = None
    # strategy -> the cheap core's comprehension of each step's verb (None: invalid), mathsim's executability oracle
    verb_comprehension: Callable[[str], list[float] | None] | None = None
    # problem -> does it show a phrasing only the held-out split uses (what the table reports declines against)
    shows_held_out: Callable[[str], bool] | None = None
    # (task, rng, new id) -> (the problem with new numbers, strategy -> strategy renamed alike or None) or None: the
    # augmentation of acceptance sampling (sample --renamings); None where a family has none
    renamed: Callable[[Task, random.Random, str], tuple[str, Callable[[str], str | None]] | None] | None = None


def _answer_grader(extract_answer):
    return lambda task_list, texts: [extract_answer(text) == t.answer for t, text in zip(task_list, texts)]


def _math_exact_success(task, strategy):
    """The cheap core's chance of success (sim_math.exact_success): the offline world, read in-process for curves
    only, like a gym's `info`."""
    return sim_math.exact_success(task.problem, strategy)


def _math_verb_comprehension(strategy):
    """The cheap core's comprehension of each step's verb (sim_math's table; 0 for a verb outside the lexicon), None
    for an invalid strategy: an oracle of the offline world, like _math_exact_success."""
    parsed = strategy_format.parse_strategy(strategy)
    return [sim_math.CHEAP.comprehension(s.verb) for s in parsed.steps] if parsed.valid else None


def _code_parse_strategy(text):
    steps, error = codesim.parse_code_strategy(text)
    return strategy_format.ParsedStrategy(steps=steps, error=error)


def _code_benchmark(name):
    """The rules of a real code benchmark: free-text strategies, the reply's code run with the task's own tests."""
    def parse_strategy(text):
        steps, error = strategy_format.free_text_steps(text)
        return strategy_format.ParsedStrategy(steps=steps, error=error)

    def grade(task_list, texts):
        results = code_bench.run_tests(task_list, [code_bench.extract_code(t) for t in texts], desc="grade")
        return [r.status == "passed" for r in results]

    def load(data_dir, n_val, n_test, seed):
        return code_bench.load_code_benchmark(name, data_dir, n_val, n_test, seed)

    return Family(name, task_from_json=code_bench.CodeTask.from_json, guide_prompt=strategy_format.guide_prompt,
                  guide_messages=code_bench.code_guide_messages, core_messages=code_bench.code_core_messages,
                  teacher_messages=code_bench.code_teacher_messages, parse_strategy=parse_strategy,
                  leaks=lambda strategy, task: code_bench.code_leaks(strategy), grade=grade,
                  tokenizer_text=lambda task: (strategy_format.guide_prompt(task.problem), task.solution or ""),
                  load=load, data_dir="data/kodcode")


def _code_plan_matches(task, strategy):
    steps, error = codesim.parse_code_strategy(strategy)
    return error is None and tuple(s.prim for s in steps) == task.steps


def _code_exact_success(task, strategy):
    """The capability model's chance that the cheap core writes the function bug-free (sim_code.p_bug_free): a lower
    bound on its success, since a bug the tests cannot see passes too; measuring it needs the sandbox."""
    return sim_code.p_bug_free(task.problem, strategy, sim_math.CHEAP)


def _chat(guide_prompt):
    return lambda problem: [{"role": "user", "content": guide_prompt(problem)}]


FAMILIES = {f.name: f for f in [
    Family("mathsim", task_from_json=mathsim.MathTask.from_json, guide_prompt=strategy_format.guide_prompt,
           guide_messages=_chat(strategy_format.guide_prompt), core_messages=mathsim.core_messages,
           teacher_messages=mathsim.teacher_messages, parse_strategy=strategy_format.parse_strategy,
           leaks=lambda strategy, task: strategy_format.leaks(strategy, task.problem, task.answer),
           grade=_answer_grader(strategy_format.extract_answer),
           tokenizer_text=lambda task: (strategy_format.guide_prompt(task.problem), strategy_format.grammar_text()),
           generate=mathsim.generate_tasks, canonical_strategy=mathsim.canonical_strategy,
           plan_matches=mathsim.plan_matches, exact_success=_math_exact_success, renamed=mathsim.renamed,
           verb_comprehension=_math_verb_comprehension, shows_held_out=mathsim.shows_held_out),
    Family("gsm8k", task_from_json=gsm8k.GSM8KTask.from_json, guide_prompt=gsm8k.guide_prompt,
           guide_messages=gsm8k.guide_messages, core_messages=gsm8k.core_messages,
           teacher_messages=gsm8k.teacher_messages, parse_strategy=gsm8k.parse_strategy,
           leaks=lambda strategy, task: gsm8k.leaks(strategy, task.problem, task.answer),
           grade=_answer_grader(gsm8k.extract_answer), tokenizer_text=gsm8k.training_text,
           load=lambda data_dir, n_val, n_test, seed: gsm8k.load(data_dir, n_val, seed), data_dir="data/gsm8k"),
    Family("codesim", task_from_json=codesim.CodesimTask.from_json, guide_prompt=strategy_format.guide_prompt,
           guide_messages=_chat(strategy_format.guide_prompt), core_messages=code_bench.code_core_messages,
           teacher_messages=code_bench.code_teacher_messages, parse_strategy=_code_parse_strategy,
           leaks=lambda strategy, task: code_bench.code_leaks(strategy),
           grade=lambda task_list, texts: codesim.codesim_verdicts(task_list,
                                                                   [code_bench.extract_code(t) for t in texts]),
           tokenizer_text=lambda task: (strategy_format.guide_prompt(task.problem), code_bench.CODE_TEACHER_SYSTEM),
           generate=lambda n, seed, split, level: codesim.generate_codesim(n, seed, split),       # one level
           canonical_strategy=codesim.canonical_code_strategy, plan_matches=_code_plan_matches,
           exact_success=_code_exact_success, shows_held_out=codesim.shows_held_out),
    _code_benchmark("kodcode"),
    _code_benchmark("humaneval"),
]}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r} (available: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_of(task) -> Family:
    return FAMILIES[task.family]


def grade_replies(task_list, replies) -> list:
    """Whether each core reply (its .text) solves its task, None where the request failed for good (an exception in
    its place). Each family grades its replies in one batch: a code family runs their code in the sandbox, one
    program per task."""
    out = [None] * len(task_list)
    by_family = {}
    for i, (t, r) in enumerate(zip(task_list, replies)):
        if not isinstance(r, Exception):
            by_family.setdefault(family_of(t).name, []).append(i)
    for name, idx in by_family.items():
        texts = [replies[i].text for i in idx]
        for i, verdict in zip(idx, FAMILIES[name].grade([task_list[i] for i in idx], texts)):
            out[i] = bool(verdict)
    return out


def prompt_tokens(tokenizer, task) -> list:
    """The guide's prompt for a task as token ids. A from-scratch guide reads <|bos|> then the family's
    guide_prompt(problem), where a special token's spelling stays text; a pretrained guide's tokenizer
    (hf.HFEncoding, which has chat_tokens) renders the family's guide_messages(problem) in its own chat format.
    Supervised training, RL and evaluation all encode prompts here, so they always agree."""
    family = family_of(task)
    if hasattr(tokenizer, "chat_tokens"):
        return tokenizer.chat_tokens(family.guide_messages(task.problem))
    return [tokenizer.encode_single_token("<|bos|>")] + tokenizer.encode(family.guide_prompt(task.problem),
                                                                         disallowed_special=())
