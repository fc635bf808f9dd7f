"""mathsim.py and strategy_format.py: generator and reader, strategy grammar, leaks, answer extraction, prompts, CLI."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

import mathsim
import strategy_format
from mathsim import (MathTask, UnreadableProblem, canonical_strategy, core_messages, generate_tasks, read_problem,
                     teacher_messages)
from strategy_format import (extract_answer, extract_strategy, guide_prompt, leaks, parse_core_request, parse_strategy,
                             parse_teacher_request)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXED = [t for split in mathsim.SPLITS for t in generate_tasks(200, 3, split)]
LEVEL1 = [t for split in mathsim.SPLITS for t in generate_tasks(200, 3, split, level=1)]


def templates_used(problem):
    """Names of the templates the sentences of a problem use (to check which split a text could come from)."""
    return [t.name for t, _ in mathsim._match_sentences(problem)]


def value_of(task, ref, results):
    return task.quantities[ref[1]].value if ref[0] == "q" else results[ref[1]]


# ---- generator and reader ----
def test_reader_inverts_the_generator_over_3200_tasks():
    for level in (1, 2):
        for split in mathsim.SPLITS:
            for task in generate_tasks(400, 11, split, level):
                assert read_problem(task.problem) == dataclasses.replace(task, id="", split=""), task.problem


def check_task(task):
    """What every task of every level satisfies."""
    # only fact sentences carry numbers, so the numbers in the text are the quantities in order of appearance
    assert [int(n) for n in re.findall(r"\d+", task.problem)] == [q.value for q in task.quantities]
    assert len({q.handle for q in task.quantities}) == len(task.quantities)
    results = []
    for k, op in enumerate(task.ops):
        assert all(r[0] == "q" or r[1] < k for r in (op.a, op.b))
        v = mathsim.apply_op(op.op, value_of(task, op.a, results), value_of(task, op.b, results))
        assert v.denominator == 1 and v >= 0          # exact division, no negative results
        results.append(int(v))
    assert task.answer == results[-1] and task.solution.endswith(f"\n#### {task.answer}")
    used_steps = {r[1] for op in task.ops for r in (op.a, op.b) if r[0] == "s"}
    assert used_steps == set(range(len(task.ops) - 1))   # every result feeds the answer
    used = {r[1] for op in task.ops for r in (op.a, op.b) if r[0] == "q"}
    assert set(task.distractors) == set(range(len(task.quantities))) - used
    assert max(q.value for q in task.quantities) <= 250 and task.answer <= 600


def in_computation_order(task):
    """Is every operation's sentence after the sentences of the quantities and results it reads?"""
    sentences = [(t.part, m.groupdict()) for t, m in mathsim._match_sentences(task.problem)]
    leaf_at = [i for i, (part, _) in enumerate(sentences) if part == "leaf"]
    op_at = [i for i, (part, _) in enumerate(sentences) if part in mathsim.OPS]
    # ops are numbered in computation order, which is not sentence order: match each op by its value's operands
    defined = {g["X"]: i for i, (part, g) in enumerate(sentences) if part in mathsim.OPS}
    handle_at = {q.handle: leaf_at[k] for k, q in enumerate(task.quantities)}
    for part, g in (sentences[i] for i in op_at):
        if any((handle_at.get(x) if x in handle_at else defined[x]) > defined[g["X"]] for x in (g["A"], g["B"])):
            return False
    return True


def test_level_1_is_short_and_stated_in_computation_order():
    for task in LEVEL1:
        check_task(task)
        assert 1 <= len(task.ops) <= 3 and 0 <= len(task.distractors) <= 1
        assert in_computation_order(task)
    assert {len(t.ops) for t in LEVEL1} == {1, 2, 3} and {len(t.distractors) for t in LEVEL1} == {0, 1}
    assert {o.op for t in LEVEL1 for o in t.ops} == set(mathsim.OPS)
    # distractors anywhere: first, last and in between
    positions = {t.distractors[0] for t in LEVEL1 if t.distractors}
    assert 0 in positions and len(positions) >= 3
    assert not {t.problem for t in LEVEL1} & {t.problem for t in MIXED}
    with pytest.raises(ValueError, match="level"):
        generate_tasks(3, 1, "train", level=3)


def test_tasks_follow_the_design():
    for task in MIXED:
        check_task(task)
    assert {len(t.ops) for t in MIXED} == {2, 3, 4, 5, 6} and {len(t.distractors) for t in MIXED} == {0, 1, 2}
    assert {o.op for t in MIXED for o in t.ops} == set(mathsim.OPS)
    assert sum(not in_computation_order(t) for t in MIXED) > len(MIXED) / 2     # level 2 shuffles the facts
    two_results = [t for t in MIXED if any(o.a[0] == o.b[0] == "s" for o in t.ops)]
    assert 0.3 < len(two_results) / len(MIXED) < 0.9   # DAGs, not only chains
    # facts are not stated in computation order: quantity indices in order of use are often not increasing
    use_order = [[r[1] for o in t.ops for r in (o.a, o.b) if r[0] == "q"] for t in MIXED]
    assert sum(u != sorted(u) for u in use_order) > len(MIXED) / 2


def test_generation_is_a_pure_function_of_n_seed_split():
    a = generate_tasks(20, 5, "train")
    assert a == generate_tasks(20, 5, "train") and a[:7] == generate_tasks(7, 5, "train")
    assert [t.id for t in a] == [f"train-5-{i}" for i in range(20)]
    assert {t.problem for t in a}.isdisjoint(t.problem for t in generate_tasks(20, 6, "train"))
    assert {t.problem for t in a}.isdisjoint(t.problem for t in generate_tasks(20, 5, "val"))
    assert generate_tasks(0, 1, "test") == []
    with pytest.raises(ValueError, match="split"):
        generate_tasks(3, 1, "dev")


def test_only_the_ood_split_holds_out_templates_and_vocabulary():
    held = {t.name for t in mathsim.TEMPLATES if t.ood_only}
    held_words = set(mathsim.OOD_NAMES) | {w for scene in mathsim.OOD_SCENES for w in scene}
    for task in (t for t in MIXED + LEVEL1 if t.split != "ood"):
        assert not held & set(templates_used(task.problem))
        assert not held_words & set(re.findall(r"[A-Za-z]+", task.problem))
    for pool in (MIXED, LEVEL1):
        ood = [t for t in pool if t.split == "ood"]
        assert sum(bool(held & set(templates_used(t.problem))) for t in ood) > 0.8 * len(ood)
        assert held <= {name for t in ood for name in templates_used(t.problem)}
    # train and test come from one distribution: every template the test split uses, training uses too
    for pool in (MIXED, LEVEL1):
        train = {name for t in pool if t.split == "train" for name in templates_used(t.problem)}
        assert {name for t in pool if t.split == "test" for name in templates_used(t.problem)} <= train


def test_json_round_trip_and_bad_records():
    for task in MIXED[:50]:
        assert MathTask.from_json(json.loads(json.dumps(task.to_json()))) == task
    broken = MIXED[0].to_json()
    del broken["ops"]
    with pytest.raises(ValueError, match="not a mathsim task record"):
        MathTask.from_json(broken)


def test_reader_rejects_what_it_cannot_read():
    task = next(t for t in MIXED if t.distractors == () and len(t.ops) >= 3)
    sentences = re.split(r"(?<=[.?])\s+", task.problem)
    leaf = next(s for s in sentences if re.search(r"\d", s))
    relation = next(s for s in sentences[1:-1] if not re.search(r"\d", s))
    cases = {
        "": "empty",
        "Janet's ducks lay 16 eggs per day. How many eggs does she sell?": "sentence 1 is not in a form",
        " ".join(sentences[:-1]): "end with its one question",
        " ".join(s for s in sentences if s != leaf): "used but never given",
        " ".join(s for s in sentences if s != relation): "never used|never given|no fact defines",
        " ".join(sentences[:-1] + [leaf, sentences[-1]]): "same quantity",
        task.problem.replace("?", "? How many apples are there?"): "one question",
    }
    for text, reason in cases.items():
        with pytest.raises(UnreadableProblem, match=reason):
            read_problem(text)
    inexact = "Mia is busy sorting apples. There are 7 apples. There are 2 crates. The number of apples per crate " \
              "is the number of apples divided by the number of crates. How many apples per crate are there?"
    with pytest.raises(UnreadableProblem, match="not exact"):
        read_problem(inexact)


# ---- strategies ----
def test_canonical_strategies_parse_to_the_solution():
    for task in MIXED:
        parsed = parse_strategy(canonical_strategy(task))
        assert parsed.valid, parsed.error
        assert [s.op for s in parsed.steps] == [o.op for o in task.ops]
        assert all(s.filler_words == 0 and s.verb == strategy_format.CANONICAL[s.op].key for s in parsed.steps)
        assert not leaks(canonical_strategy(task), task.problem, task.answer)
    text = canonical_strategy(MIXED[0])
    assert text.startswith("<strategy>\n1. ") and text.endswith(".\n</strategy>")


def test_every_verb_form_parses_with_its_operand_order():
    for op, forms in strategy_format.VERBS.items():
        for form in forms:
            text = f"<strategy>\n1. {form.pattern.format(a='12', b='the result of step 3')}.\n</strategy>"
            (step,) = parse_strategy(text).steps
            assert (step.op, step.verb, step.operands, step.filler_words) == \
                   (op, form.key, ("12", "the result of step 3"), 0), form
            assert step.args == (("the result of step 3", "12") if form.swap else ("12", "the result of step 3"))
    assert {f.key for forms in strategy_format.VERBS.values() for f in forms} == {
        "Add", "Sum", "Increase … by", "Total", "Put together", "Combine", "Subtract", "Take away",
        "Find the difference between", "Remove", "Reduce … by", "Deduct", "Multiply", "Find the product of", "Times",
        "Repeat … for each", "Scale", "Divide", "Find the quotient of", "Split … into", "Share … among",
        "Find how many … fit in"}


def test_parser_reads_handles_pronouns_and_counts_filler():
    text = ("Here is the plan.\n<strategy>\n1. Now carefully multiply the apples per crate on Monday by the crates "
            "to get the total.\n2) Simply subtract 5 from it so we know more.\n3. Triple that and 4\n"
            "4. Divide the result of step 3 by 2.\n   The answer is 42.\n5. Triple the result of step 4 by 3.\n"
            "</strategy>\nDone.")
    steps = parse_strategy(text).steps
    assert [(s.index, s.op, s.verb, s.operands, s.filler_words) for s in steps] == [
        (1, "mul", "Multiply", ("the apples per crate on Monday", "the crates"), 6),
        (2, "sub", "Subtract", ("5", "it"), 5),
        (3, None, "Triple", ("that", "4"), 0),           # an unknown verb is a valid step with op None
        (4, "div", "Divide", ("the result of step 3", "2"), 4),
        (5, None, "Triple", ("the result of step 4", "3"), 0)]


@pytest.mark.parametrize("text, reason", [
    ("1. Multiply 3 by 6.\n</strategy>", "missing <strategy> tag"),
    ("<strategy>\n1. Multiply 3 by 6.", "missing </strategy> tag"),
    ("<strategy>\n\n</strategy>", "no numbered steps"),
    ("<strategy>\n1. Multiply 3 by 6.\n3. Add 2 to it.\n</strategy>", "found 3 where 2 was expected"),
    ("<strategy>\n2. Multiply 3 by 6.\n</strategy>", "found 2 where 1 was expected"),
    ("<strategy>\nStep 1: Multiply 3 by 6.\n</strategy>", "text before step 1"),
    ("<strategy>\n1. Multiply 3 by 6.\n2. The answer is 18.\n</strategy>", "step 2 is not an operation"),
    ("<strategy>\n1. Add 3 to\n</strategy>", "step 1 is not an operation"),
    (None, "not text"),
])
def test_parser_rejects_malformed_strategies_with_a_reason(text, reason):
    parsed = parse_strategy(text)
    assert not parsed.valid and parsed.steps == [] and reason in parsed.error


def test_extract_strategy():
    assert extract_strategy("ok <strategy>\n1. Add 1 to 2.\n</strategy> <strategy>x</strategy>") == \
        "<strategy>\n1. Add 1 to 2.\n</strategy>"
    assert extract_strategy("<strategy>\n1. Add 1 to 2.") is None and extract_strategy("") is None


def test_leaks():
    task = next(t for t in MIXED if t.answer not in [q.value for q in t.quantities] and t.answer > len(t.ops))
    strategy = canonical_strategy(task)
    assert not leaks(strategy, task.problem, task.answer)
    assert leaks(strategy.replace("\n</strategy>", f" The answer is {task.answer}.\n</strategy>"), task.problem,
                 task.answer)
    inside = next(t for t in MIXED if t.answer in [q.value for q in t.quantities])
    assert not leaks(f"<strategy>\n1. Add {inside.answer} to 0.\n</strategy>", inside.problem, inside.answer)
    # step numbers and step references are not the answer
    steps = "<strategy>\n1. Add 2 to 2.\n2. Add 1 to 1.\n3. Add the result of step 1 to the result of step 2.\n" \
            "</strategy>"
    assert not leaks(steps, "There are 2 and 1 apples.", 3) and leaks(steps + " 3", "2 and 1", 3)


@pytest.mark.parametrize("reply, answer", [
    ("Step 1: 3 * 6 = 18\n#### 18", 18), ("so 12 then 20.", 20), ("#### 1,234\nthanks 7", 1234),
    ("#### $45", 45), ("#### 3.5", None), ("no numbers", None), ("#### 4 ... #### 5", 5), ("Total: 12.0", 12),
    ("", None)])
def test_extract_answer(reply, answer):
    assert extract_answer(reply) == answer


# ---- prompts ----
def test_prompts_invert():
    problem = MIXED[0].problem
    for strategy in (None, "", canonical_strategy(MIXED[0]), "Problem: tricky\n\nStrategy:\nnested"):
        messages = core_messages(problem, strategy)
        assert [m["role"] for m in messages] == ["system", "user"] and "#### N" in messages[0]["content"]
        assert parse_core_request(messages) == (problem, strategy)
    messages = teacher_messages(problem)
    assert "<strategy>" in messages[0]["content"] and parse_teacher_request(messages) == problem
    assert guide_prompt(problem).startswith("Problem: " + problem) and guide_prompt(problem).endswith("Strategy:\n")
    with pytest.raises(ValueError, match="must start with"):
        parse_core_request([{"role": "user", "content": "What is 2 + 2?"}])
    with pytest.raises(ValueError):
        parse_teacher_request([])


# ---- command line ----
def run_cli(*args):
    return subprocess.run([sys.executable, "mathsim.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_prints_tasks_as_json_lines():
    out = run_cli("--n", "3", "--seed", "4", "--split", "test")
    assert out.returncode == 0, out.stderr
    assert [MathTask.from_json(json.loads(line)) for line in out.stdout.splitlines()] == generate_tasks(3, 4, "test")
    bad = run_cli("--split", "dev")
    assert bad.returncode == 2 and "invalid choice: 'dev'" in bad.stderr and bad.stdout == ""
    assert run_cli("--n", "-1").returncode == 2


@pytest.mark.parametrize("change", [dict(ops=[["pow", ["q", 0], ["q", 1]]]), dict(ops=[["add", ["q", 0], ["q", 99]]]),
                                    dict(ops=[["add", ["s", 0], ["q", 0]]]), dict(problem=12345),
                                    dict(distractors=[7]), dict(ops=[])])
def test_a_malformed_task_record_is_refused(change):
    record = mathsim.generate_tasks(1, 0, "train", 1)[0].to_json()
    with pytest.raises(ValueError, match="not a mathsim task record"):
        mathsim.MathTask.from_json(dict(record, **change))
