"""The gsm8k task family in gsm8k.py: the loader (on the real files when present), strategies, leaks, answers."""
import json
import os
from fractions import Fraction

import pytest

import gsm8k
import strategy_format

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "gsm8k")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "train.jsonl")),
                                reason=f"GSM8K not found in {DATA}")


@needs_data
def test_loader_reads_every_gsm8k_problem():
    splits = gsm8k.load(DATA, n_val=200, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 7273, "val": 200, "test": 1319}
    with open(os.path.join(DATA, "train.jsonl")) as f:
        raw = [json.loads(line) for line in f]
    by_id = {t.id: t for t in splits["train"] + splits["val"]}
    assert len(by_id) == 7473                                   # train + val is the whole train file, no overlap
    for n, row in enumerate(raw, 1):                           # every answer parsed: the "#### N" line, commas out
        assert by_id[f"train-{n}"].answer == int(row["answer"].split("####")[-1].replace(",", ""))
    assert by_id["train-1"].answer == 72 and splits["test"][0].id == "test-1"
    assert any(t.answer < 0 for t in splits["train"] + splits["val"] + splits["test"])
    again = gsm8k.load(DATA, n_val=200, seed=0)
    assert [t.id for t in again["val"]] == [t.id for t in splits["val"]]                  # a fixed seed
    assert [t.id for t in gsm8k.load(DATA, n_val=200, seed=1)["val"]] != [t.id for t in splits["val"]]
    t = splits["val"][0]
    assert gsm8k.GSM8KTask.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"train\.jsonl: missing \(see data/README\.md"):
        gsm8k.load(str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "#### 1,000"}\n' * 3)
    with pytest.raises(ValueError, match=r"test\.jsonl: missing"):
        gsm8k.load(str(tmp_path), n_val=1)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 4"}\n{"question": "q", "answer": "4"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not a GSM8K record"):
        gsm8k.load(str(tmp_path), n_val=1)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 4"}\n')
    splits = gsm8k.load(str(tmp_path), n_val=1)
    assert [t.answer for t in splits["train"] + splits["val"]] == [1000] * 3 and len(splits["val"]) == 1
    with pytest.raises(ValueError, match="n_val"):
        gsm8k.load(str(tmp_path), n_val=3)


def strategy(*steps):
    return "<strategy>\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) + "\n</strategy>"


def test_free_text_strategy_validity():
    ok = gsm8k.parse_strategy("Plan:\n" + strategy("Halve April's clips to get May's.", "Add April and May."))
    assert ok.valid and ok.steps == ["Halve April's clips to get May's.", "Add April and May."]
    wrapped = gsm8k.parse_strategy("<strategy>\n1. Find the\nprice per minute.\n</strategy>")
    assert wrapped.valid and wrapped.steps == ["Find the price per minute."]
    assert gsm8k.parse_strategy(strategy(*["Add."] * 12)).valid
    bad = {
        "1. Add them.\n</strategy>": "missing <strategy>",
        "<strategy>\n1. Add them.": "missing </strategy>",
        "<strategy>\n</strategy>": "no numbered steps",
        strategy(*["Add."] * 13): "13 steps",
        "<strategy>\n1. Add.\n3. Sum.\n</strategy>": "found 3 where 2",
        "<strategy>\nFirst add.\n1. Add.\n</strategy>": "text before step 1",
        "<strategy>\n1.\n2. Add.\n</strategy>": "step 1 is empty",
        strategy("word " * 61): "step 1 has 61 words",
        "<strategy>\n1. Run this:\n```python\nprint(2)\n```\n</strategy>": "code block",
    }
    for text, reason in bad.items():
        parsed = gsm8k.parse_strategy(text)
        assert not parsed.valid and reason in parsed.error, (text, parsed.error)
    assert gsm8k.parse_strategy(strategy("word " * 60)).valid


def test_leak_rule():
    problem = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    assert gsm8k.leaks(strategy("Halve 48.", "Add 48 and 24 to get 72."), problem, 72)
    assert gsm8k.leaks(strategy("The total is 72."), problem, 72)
    assert not gsm8k.leaks(strategy("Halve 48.", "Add it to 48."), problem, 72)
    assert not gsm8k.leaks(strategy("Halve 48."), problem, 48)           # the problem states 48 itself
    assert not gsm8k.leaks(strategy("Add the result of step 1 to it.", "Halve it."), problem, 1)


@pytest.mark.parametrize("reply, answer", [
    ("48 / 2 = 24\n48 + 24 = 72\n#### 72", 72), ("#### 1,234", 1234), ("She earns $10.", 10),
    ("So the total is \\boxed{18}.", 18), ("\\boxed{\\$1,200}", 1200), ("The answer is 42.", 42),
    ("Therefore, the answer is: **-7**", -7), ("#### $ 70", 70), ("It costs 12.50 dollars.", Fraction(25, 2)),
    ("Total: $18.00.", 18), ("I think #### 5 ... wait #### 6", 6), ("no number here", None), ("", None),
    ("The answer is 9, since 3 * 3 = 9 and 10 - 1 = 9.", 9), ("#### 3 \\boxed{4}", 3),
])
def test_answer_extraction(reply, answer):
    assert gsm8k.extract_answer(reply) == answer


def test_prompts_round_trip_through_the_request_readers():
    problem = "Weng earns $12 an hour. How much for 50 minutes?"
    core = gsm8k.core_messages(problem, strategy("Divide 12 by 60.", "Multiply by 50."))
    assert strategy_format.parse_core_request(core) == (problem, strategy("Divide 12 by 60.", "Multiply by 50."))
    assert strategy_format.parse_core_request(gsm8k.core_messages(problem, None)) == (problem, None)
    assert strategy_format.parse_teacher_request(gsm8k.teacher_messages(problem)) == problem
    guide = gsm8k.guide_messages(problem)
    assert guide[-1]["content"].endswith(problem) and "<strategy>" in guide[0]["content"]
