"""The real code path end to end with a scripted OpenAI-shaped server as core and teacher: KodCode (a user's JSONL)
through every stage with a small from-scratch guide, and HumanEval's 164 problems as the test split of a run that
trains on KodCode. Every reply is graded by running its code in the sandbox."""
import json
import os
import re

import pytest

import code_bench
import exectune
import strategy_format
from conftest import answering

HUMANEVAL = {t.prompt: t for t in code_bench.load_humaneval()}


def kodcode_file(path, n=24):
    """KodCode-shaped records, "add k" problems; half of them never name their function (the tests import it)."""
    os.makedirs(path)
    with open(os.path.join(path, code_bench.KODCODE_FILE), "w") as f:
        for i in range(n):
            name = f"add_{i}"
            question = (f"Write a function {name}(xs) that adds {i} to every element of the list xs." if i % 2 else
                        f"Given a list of integers, return a new list with {i} added to every element.")
            f.write(json.dumps({"question_id": f"k{i}", "question": question,
                                "solution": f"def {name}(xs):\n    return [x + {i} for x in xs]\n",
                                "test_code": f"from solution import {name}\n\ndef test_add():\n"
                                             f"    assert {name}([1, -2]) == [{1 + i}, {-2 + i}]\n"
                                             f"    assert {name}([]) == []\n"}) + "\n")
    return path


def code_answer(body):
    """Teacher: a valid strategy, one with code in it, or one without tags, by draw. Core on KodCode: the right
    function with a valid strategy; alone, right when k is even. Core on HumanEval: the canonical solution when
    the task number is even or a strategy is given, else an empty body."""
    messages = body["messages"]
    problem, strategy = strategy_format.parse_core_request(messages)
    if messages[0]["content"] == code_bench.CODE_TEACHER_SYSTEM:
        return ["<strategy>\n1. Add the number to each element.\n2. Return the new list.\n</strategy>",
                "<strategy>\n1. Use ```return [x + k for x in xs]```.\n</strategy>",
                "Add k to everything."][body.get("seed", 0) % 3]
    if problem in HUMANEVAL:
        task = HUMANEVAL[problem]
        right = strategy is not None or int(task.id.split("/")[1]) % 2 == 0
        return "```python\n" + task.prompt + (task.solution if right else "    pass\n") + "```"
    k = int(re.search(r"(?:adds|with) (\d+)", problem).group(1))
    name = re.search(r"\b(add_\d+)\b", problem).group(1)
    right = (strategy is not None and strategy_format.free_text_steps(strategy)[1] is None) or k % 2 == 0
    return f"Here it is:\n```python\ndef {name}(xs):\n    return [x + {k if right else k + 1} for x in xs]\n```"


def test_kodcode_recipe_and_humaneval_eval(tmp_path, fake, capsys):
    scripted_url = fake(answering(code_answer)).url + "/v1"
    data = kodcode_file(str(tmp_path / "kodcode"))
    common = ["--core-url", scripted_url, "--core-model", "claude-3-5-haiku-20241022",
              "--large-core-model", "claude-3-5-sonnet-20241022", "--teacher-model", "claude-3-5-sonnet-20241022"]
    run = str(tmp_path / "run")

    def cli(stage, *argv):
        return exectune.main([stage, "--run", run, *common, *argv])

    assert cli("data", "--family", "kodcode", "--data-dir", data, "--n-val", "4", "--n-test", "6") == 0
    splits = {s: [json.loads(line) for line in open(os.path.join(run, "data", f"{s}.jsonl"))]
              for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [14, 4, 6]
    assert len({r["id"] for v in splits.values() for r in v}) == 24             # disjoint splits
    assert cli("tokenizer", "--vocab-size", "300") == 0
    assert cli("baselines", "--alone-runs", "1") == 0
    rows = {r["name"]: r for r in json.load(open(os.path.join(run, "results.json")))}
    ks = [int(r["id"][1:]) for r in splits["test"]]
    assert rows["core alone"]["accuracy"] == pytest.approx(sum(k % 2 == 0 for k in ks) / 6)   # graded by running
    assert cli("sample", "--k", "3", "--m", "1") == 0
    raw = [json.loads(line) for line in open(os.path.join(run, "raw.jsonl"))]
    assert [(r["valid"], r["leaks"], r["accepted"]) for r in raw[:3]] == [(True, False, True), (True, True, False),
                                                                          (False, False, False)]
    assert cli("sft", "--data", "accepted", "--steps", "4", "--batch-size", "4", "--eval-every", "4", "--n-layer", "1",
               "--n-embd", "32", "--n-head", "2", "--n-kv-head", "1", "--no-compile", "--max-new-tokens", "16") == 0
    assert cli("eval", "--guide", "sft-accepted/best", "--name", "ExecTune w/o RL") == 0
    assert cli("eval", "--guide", "teacher", "--name", "teacher") == 0
    rows = {r["name"]: r for r in json.load(open(os.path.join(run, "results.json")))}
    assert rows["teacher"]["accuracy"] == 1.0 and rows["teacher"]["validity"] == 1.0     # draw 0: the valid one
    assert rows["ExecTune w/o RL"]["n"] == 6 and rows["ExecTune w/o RL"]["accuracy_ood"] is None

    # HumanEval: eval --family on a fresh run writes its data first (train and val from KodCode, test = HumanEval)
    human = str(tmp_path / "human")
    assert exectune.main(["eval", "--run", human, *common, "--family", "humaneval", "--data-dir", data,
                          "--n-val", "4", "--guide", "none", "--name", "core alone"]) == 0
    row = json.load(open(os.path.join(human, "results.json")))[0]
    assert row["n"] == 164 and row["accuracy"] == pytest.approx(82 / 164)     # the even-numbered canonical solutions
    capsys.readouterr()
    assert exectune.main(["eval", "--run", human, *common, "--family", "gsm8k", "--guide", "none"]) == 1
    assert "holds humaneval tasks, not gsm8k" in capsys.readouterr().err
    assert exectune.main(["data", "--run", str(tmp_path / "r3"), *common, "--family", "kodcode", "--data-dir",
                          str(tmp_path / "none")]) == 1
    assert "no KodCode file at" in capsys.readouterr().err
