"""HumanEval and KodCode loading and grading in the sandbox, and code strategies' validity and leakage."""
import json

import pytest

import code_bench as cb
import strategy_format


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    tasks = cb.load_humaneval()
    assert len(tasks) == 164 and len({t.id for t in tasks}) == 164
    # 15 s on the project's quiet 2-core machine (both gradings); no timing assert, the suite also runs on busy ones.
    good = cb.run_tests(tasks, [t.solution for t in tasks], workers=2)
    empty = cb.run_tests(tasks, ["    pass\n"] * len(tasks), workers=2)
    assert [t.id for t, r in zip(tasks, good) if r.status != "passed"] == []
    assert [t.id for t, r in zip(tasks, empty) if r.status == "passed"] == []


def test_humaneval_whole_function_completion_in_a_fence():
    task = cb.load_humaneval()[0]
    reply = ("Here it is:\n```python\nfrom typing import List\n\n"
             f"def {task.entry_point}(numbers: List[float], threshold: float) -> bool:\n"
             "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```\n")
    assert cb.run_tests([task], [cb.extract_code(reply)])[0].status == "passed"
    wrong = reply.replace("< threshold", "> threshold")
    assert cb.run_tests([task], [cb.extract_code(wrong)])[0].status == "failed"


KOD_TEST = """from solution import clip_sum
import pytest

@pytest.mark.parametrize("xs, hi, expected", [([1, 2, 3], 2, 5), ([], 5, 0), ([-4, 9], 3, -1)])
def test_values(xs, hi, expected):
    assert clip_sum(xs, hi) == expected

def test_float():
    assert clip_sum([0.1, 0.2], 1) == pytest.approx(0.3)

def test_bad_type():
    with pytest.raises(TypeError):
        clip_sum(None, 1)

@pytest.fixture
def data():
    return [5, 5, 5]

class TestClass:
    def test_fixture(self, data):
        assert clip_sum(data, 4) == 12
"""
KOD_SOLUTION = "def clip_sum(xs, hi):\n    return sum(min(x, hi) for x in xs)\n"


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


def test_kodcode_field_variants_and_grading(tmp_path):
    records = [{"question_id": "q1", "question": "Sum xs, each clipped at hi.", "test": KOD_TEST,
                "solution": KOD_SOLUTION},
               "",
               {"task_id": "q2", "prompt": "Same.", "test_code": KOD_TEST, "entry_point": "clip_sum"},
               {"question": "Same.",
                "test": KOD_TEST.replace("from solution import clip_sum", "from solution import *"),
                "test_info": [{"function_name": "clip_sum"}]},
               {"question": "Same.", "test": "import solution\ndef test_it():\n    assert solution.f() == 1\n",
                "solution": "def f():\n    return 1\n"}]
    tasks = cb.load_kodcode(_write(tmp_path / "k.jsonl", records))
    assert [(t.id, t.entry_point) for t in tasks] == [("q1", "clip_sum"), ("q2", "clip_sum"),
                                                      ("kodcode/4", "clip_sum"), ("kodcode/5", "f")]
    wrong = "def clip_sum(xs, hi):\n    return sum(max(x, hi) for x in xs)\n"
    results = cb.run_tests(tasks[:3] * 2 + tasks[3:], [KOD_SOLUTION] * 3 + [wrong] * 3 + [tasks[3].solution], workers=2)
    assert [r.status for r in results] == ["passed"] * 3 + ["failed"] * 3 + ["passed"]
    assert results[0].stdout.strip() == "6 of 6 tests passed"
    assert "tests failed" in results[3].reason and "test_values" in results[3].reason


def test_kodcode_runs_without_pytest_and_classifies_sandbox_violations(tmp_path):
    # The stand-in is used even though this environment has pytest: the real one never loads in the sandbox.
    probe = {"question": "q", "test": "import pytest\ndef test_shim():\n    assert not hasattr(pytest, 'main')\n",
             "entry_point": "g"}
    hostile = {"question": "q", "test": "from solution import g\ndef test_g():\n    assert g() == 0\n",
               "entry_point": "g"}
    tasks = cb.load_kodcode(_write(tmp_path / "k.jsonl", [probe, hostile]))
    results = cb.run_tests(tasks, ["", "import os\ndef g():\n    os.kill(os.getppid(), 9)\n"])
    assert results[0].status == "passed", results[0]
    assert results[1].status == "crashed" and "os.kill" in results[1].reason


@pytest.mark.parametrize("lines, message", [
    (['{"question": "q", "test": "def test_a(): pass", "entry_point": "f"}', "{not json"],
     r"k\.jsonl:2: not valid JSON"),
    (['[1, 2]'], r"k\.jsonl:1: a record must be a JSON object"),
    (['{"test": "def test_a(): pass", "entry_point": "f"}'], r"k\.jsonl:1: no question"),
    (['{"question": "q", "entry_point": "f"}'], r"k\.jsonl:1: no test code"),
    (['{"question": "q", "test": "assert True", "entry_point": "f"}'], r"k\.jsonl:1: .*no 'def test_\*'"),
    (['{"question": "q", "test": "def test_a(): pass"}'], r"k\.jsonl:1: no entry_point"),
    ([''], r"no records")])
def test_kodcode_malformed_input_names_the_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        cb.load_kodcode(_write(tmp_path / "k.jsonl", lines))


def test_kodcode_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not shipped"):
        cb.load_kodcode(str(tmp_path / "absent.jsonl"))


def test_code_strategy_validity():
    ok = "<strategy>\n1. Keep the even numbers.\n2. Square each one\n   and add them up.\n</strategy>"
    steps, error = strategy_format.free_text_steps(ok)
    assert error is None and len(steps) == 2 and steps[1].endswith("add them up.")
    for text, reason in [("1. Sort.", "missing <strategy>"), ("<strategy>\n1. Sort.", "missing </strategy>"),
                         ("<strategy>\n</strategy>", "no numbered steps"),
                         ("<strategy>\nFirst sort.\n1. Sort.\n</strategy>", "text before step 1"),
                         ("<strategy>\n1. Sort.\n3. Reverse.\n</strategy>", "numbered 1, 2, 3"),
                         ("<strategy>\n1.\n2. Sort.\n</strategy>", "step 1 is empty"),
                         ("<strategy>\n1. " + "word " * 61 + "\n</strategy>", "61 words"),
                         ("<strategy>\n" + "".join(f"{i}. Sort.\n" for i in range(1, 14)) + "</strategy>",
                          "13 steps")]:
        steps, error = strategy_format.free_text_steps(text)
        assert steps == [] and reason in error, (text, error)


@pytest.mark.parametrize("text, leaks", [
    ("1. Keep the even numbers.\n2. Return the sum of the list.", False),
    ("1. Sort the list and return it.", False),
    ("1. Define a helper that returns early.", False),
    ("1. Write def f(xs): and loop.", True),
    ("1. Use\n```python\nxs.sort()\n```", True),
    ("1. Finally return sum(x * x for x in xs).", True),
    ("1. return xs[::-1]", True)])
def test_code_leaks(text, leaks):
    assert cb.code_leaks(f"<strategy>\n{text}\n</strategy>") is leaks
