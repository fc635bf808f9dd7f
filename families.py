"""Task families: what the recipe needs from each one, in one place, and the guide's prompt for all of them.

1. `mathsim` (tasks.py, DESIGN 4.1): synthetic word problems; a reply is graded by the number after '####'.
2. `gsm8k` (tasks.py, DESIGN 4.6): the real benchmark, for a real core; graded the same way, free-text strategies.
3. `codesim` (code_tasks.py, DESIGN 4.5): list-processing functions described in English; a reply is graded by
   running the function it contains against the task's hidden tests in the sandbox (never by the simulator's
   knowledge), one sandbox program per task for a whole batch of replies.
`family_of(task)` picks a task's family from its type, so every stage prompts and grades a task by its own rules.
The stages never branch on a family's name: what differs is a field of `Family`.
"""
from dataclasses import dataclass

import code_tasks
import tasks


@dataclass(frozen=True)
class Family:
    name: str
    task_type: type
    task_from_json: object      # dict -> task
    guide_prompt: object        # problem -> text (a guide without a chat format)
    guide_messages: object      # problem -> messages (a pretrained chat guide, through its template)
    core_messages: object       # (problem, strategy or None) -> messages
    teacher_messages: object    # problem -> messages
    parse_strategy: object      # text -> tasks.ParsedStrategy
    leaks: object               # (strategy, task) -> bool
    grade: object               # (tasks, reply texts) -> [bool]: is each reply a correct solution of its task
    tokenizer_text: object      # task -> strings a from-scratch guide's tokenizer trains on
    generate: object = None     # (n, seed, split, level) -> seeded tasks of an offline world; None: read from files
    # Oracles of an offline world, for validation curves only (None for a real benchmark): the task's clearest
    # strategy (SFT's val loss), whether a strategy is the task's plan, the cheap core's chance of success with it.
    canonical_strategy: object = None
    plan_matches: object = None
    exact_success: object = None


def _answer_grader(extract_answer):
    return lambda task_list, texts: [extract_answer(text) == t.answer for t, text in zip(task_list, texts)]


def _math_exact_success(task, strategy):
    import sim_core                   # the offline world, read in-process for curves only, like a gym's `info`
    return sim_core.exact_success(task.problem, strategy)


def _code_parse_strategy(text):
    steps, error = code_tasks.parse_code_strategy(text)
    return tasks.ParsedStrategy(steps=steps, error=error)


def _code_plan_matches(task, strategy):
    steps, error = code_tasks.parse_code_strategy(strategy)
    return error is None and tuple(s.prim for s in steps) == task.steps


def _code_exact_success(task, strategy):
    """The capability model's chance that the cheap core writes the function bug-free (sim_code.p_bug_free): a lower
    bound on its success, since a bug the tests cannot see passes too; measuring it needs the sandbox."""
    import sim_code
    import sim_core
    return sim_code.p_bug_free(task.problem, strategy, sim_core.CHEAP)


def _chat(guide_prompt):
    return lambda problem: [{"role": "user", "content": guide_prompt(problem)}]


FAMILIES = {f.name: f for f in [
    Family("mathsim", tasks.MathTask, tasks.MathTask.from_json, tasks.guide_prompt, _chat(tasks.guide_prompt),
           tasks.core_messages, tasks.teacher_messages, tasks.parse_strategy,
           lambda strategy, task: tasks.leaks(strategy, task.problem, task.answer),
           _answer_grader(tasks.extract_answer),
           lambda task: (tasks.guide_prompt(task.problem), tasks.canonical_strategy(task)), tasks.generate_tasks,
           tasks.canonical_strategy, tasks.plan_matches, _math_exact_success),
    Family("gsm8k", tasks.GSM8KTask, tasks.GSM8KTask.from_json, tasks.gsm8k_guide_prompt, tasks.gsm8k_guide_messages,
           tasks.gsm8k_core_messages, tasks.gsm8k_teacher_messages, tasks.gsm8k_parse_strategy,
           lambda strategy, task: tasks.gsm8k_leaks(strategy, task.problem, task.answer),
           _answer_grader(tasks.gsm8k_extract_answer), tasks.gsm8k_training_text),
    Family("codesim", code_tasks.CodesimTask, code_tasks.CodesimTask.from_json, tasks.guide_prompt,
           _chat(tasks.guide_prompt), code_tasks.code_core_messages, code_tasks.code_teacher_messages,
           _code_parse_strategy, lambda strategy, task: code_tasks.code_leaks(strategy),
           lambda task_list, texts: code_tasks.codesim_verdicts(task_list, [code_tasks.extract_code(t) for t in texts]),
           lambda task: (tasks.guide_prompt(task.problem), code_tasks.canonical_code_strategy(task)),
           lambda n, seed, split, level: code_tasks.generate_codesim(n, seed, split),    # one level
           code_tasks.canonical_code_strategy, _code_plan_matches, _code_exact_success),
]}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r} (available: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_of(task) -> Family:
    for family in FAMILIES.values():
        if isinstance(task, family.task_type):
            return family
    raise TypeError(f"{type(task).__name__} is not a task of any family")


def grade(task_list, texts) -> list:
    """Whether each reply text solves its task, each graded by its own family (a batch per family)."""
    out = [None] * len(task_list)
    by_family = {}
    for i, t in enumerate(task_list):
        by_family.setdefault(family_of(t).name, []).append(i)
    for name, idx in by_family.items():
        for i, verdict in zip(idx, FAMILIES[name].grade([task_list[i] for i in idx], [texts[i] for i in idx])):
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
