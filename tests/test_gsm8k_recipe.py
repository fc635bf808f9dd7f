"""The GSM8K path end to end: data -> baselines -> sample -> sft --init hf:<dir> -> grpo -> eval, on 20 problems,
with a tiny random Hugging Face guide and a scripted OpenAI-shaped server playing the core and the teacher."""
import json
import os

import pytest

import exectune
import gsm8k
import strategy_format
from conftest import answering

if os.environ.get("EXECTUNE_REQUIRE_DEV") == "1":   # see test_hf.py: .ci/run must run these, never skip them
    import transformers  # noqa: F401
else:
    pytest.importorskip("transformers")
from test_hf import tiny_hf  # noqa: E402  (after the dependency check)


def gsm8k_dir(path, n_train=20, n_test=8):
    """GSM8K-format files: "a + b" problems with the worked answer and its '#### N' line."""
    os.makedirs(path)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(os.path.join(path, f"{split}.jsonl"), "w") as f:
            for i in range(n):
                a, b = 3 + i, 1000 + 7 * i
                f.write(json.dumps({"question": f"Tom has {a} apples and buys {b} more. How many does he have?",
                                    "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b:,}"}) + "\n")
    return path


def gsm8k_answer(body):
    """Teacher: a valid strategy, a leaking one, or one without tags, by draw. Core: right with a valid strategy;
    alone, right on problems whose first number is even. Answers come back in the forms gsm8k_extract_answer reads."""
    messages = body["messages"]
    problem, strategy = strategy_format.parse_core_request(messages)
    a, b = (int(x) for x in problem.split()[2:7:4])
    if messages[0]["content"].startswith(gsm8k.TEACHER_SYSTEM):
        return ["<strategy>\n1. Add the apples Tom has to the apples he buys.\n</strategy>",
                f"<strategy>\n1. Add {a} and {b} to get {a + b}.\n</strategy>",
                "Just add them."][body.get("seed", 0) % 3]
    if strategy is not None and gsm8k.parse_strategy(strategy).valid:
        return f"{a} + {b} = {a + b}\nThe answer is \\boxed{{{a + b:,}}}."
    return f"Tom has {a + b if a % 2 == 0 else a + b + 1} apples.\n#### {a + b if a % 2 == 0 else 0}"


def test_gsm8k_recipe_with_a_pretrained_guide(tmp_path, fake, capsys):
    server = fake(answering(gsm8k_answer))
    scripted_url = server.url + "/v1"
    guide = str(tmp_path / "qwen2-tiny")
    tiny_hf("qwen2", guide, tie=True, max_len=512)
    data, run = gsm8k_dir(str(tmp_path / "gsm8k")), tmp_path / "run"
    # claude-3-5-haiku prices from core_client's table, so every stage's dollars are counted
    common = ["--run", str(run), "--core-url", scripted_url, "--core-model", "claude-3-5-haiku-20241022",
              "--large-core-model", "claude-3-5-sonnet-20241022", "--teacher-model", "claude-3-5-sonnet-20241022"]

    def cli(stage, *argv):
        return exectune.main([stage, *common, *argv])

    assert cli("data", "--family", "gsm8k", "--data-dir", data, "--n-val", "4", "--n-test", "8") == 0
    assert [sum(1 for _ in open(run / "data" / f"{s}.jsonl")) for s in ("train", "val", "test")] == [16, 4, 8]
    assert cli("baselines", "--alone-runs", "1") == 0
    assert cli("sample", "--k", "3", "--m", "1") == 0
    raw = [json.loads(line) for line in open(run / "raw.jsonl")]
    assert len(raw) == 16 * 3
    assert [(r["valid"], r["leaks"], r["accepted"]) for r in raw[:3]] == [(True, False, True), (True, True, False),
                                                                          (False, False, False)]
    assert cli("sft", "--data", "accepted", "--init", f"hf:{guide}", "--steps", "2", "--batch-size", "2",
               "--lr", "1e-4", "--warmup", "1", "--eval-every", "2", "--max-seq-len", "256",
               "--grad-checkpointing", "--no-compile", "--max-new-tokens", "12") == 0
    best = run / "sft-accepted" / "best"        # a Hugging Face directory inside a resumable training checkpoint
    assert (best / "tokenizer.json").exists() and (best / "state.json").exists()
    assert cli("grpo", "--init", "sft-accepted/best", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
               "--max-new-tokens", "12", "--eval-every", "1", "--n-val-eval", "4") == 0
    assert cli("eval", "--guide", "grpo-structure/best", "--name", "ExecTune", "--max-new-tokens", "12") == 0
    assert cli("eval", "--guide", f"hf:{guide}", "--name", "untrained guide", "--max-new-tokens", "12") == 0
    assert cli("eval", "--guide", "teacher", "--name", "teacher") == 0
    rows = {r["name"]: r for r in json.load(open(run / "results.json"))}
    assert rows["core alone"]["accuracy"] == 0.5 and rows["large core alone"]["n"] == 8
    assert rows["teacher"]["validity"] == 1.0 and rows["teacher"]["accuracy"] == 1.0   # draw 0: the valid one
    for name in ("ExecTune", "untrained guide"):
        assert rows[name]["n"] == 8 and rows[name]["guide_tokens"] > 0 and rows[name]["core_dollars_per_1k"] > 0
    assert all(r["accuracy_ood"] is None for r in rows.values())       # GSM8K has no held-out-phrasing split
    capsys.readouterr()
    assert cli("table") == 0
    out = capsys.readouterr().out
    assert "| ExecTune | " in out and json.loads(out.strip().splitlines()[-1])["accuracy"]["teacher"] == 1.0
    guide_requests = [b for _, _, b in server.hits if b["messages"][0]["content"] == gsm8k.CORE_SYSTEM]
    assert guide_requests and all("Problem: Tom has" in r["messages"][-1]["content"] for r in guide_requests)
    # eval --family on a fresh run: the untrained pretrained guide on GSM8K's test split (the data stage runs first)
    assert cli("eval", "--run", str(tmp_path / "r4"), "--family", "gsm8k", "--data-dir", data, "--n-val", "4",
               "--guide", f"hf:{guide}", "--name", "pretrained guide", "--max-new-tokens", "12") == 0
    row = json.load(open(tmp_path / "r4" / "results.json"))[0]
    assert (row["name"], row["n"], row["failures"]) == ("pretrained guide", 8, 0) and row["guide_tokens"] > 0
    capsys.readouterr()
    # user errors: a missing data directory, a malformed pretrained guide
    assert cli("data", "--run", str(tmp_path / "r2"), "--family", "gsm8k", "--data-dir", str(tmp_path / "no")) == 1
    assert "train.jsonl: missing (see data/README.md" in capsys.readouterr().err
    os.remove(os.path.join(guide, "tokenizer.json"))
    assert cli("sft", "--run", str(tmp_path / "r3"), "--init", f"hf:{guide}") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenizer.json: missing" in err and err.count("\n") == 1
