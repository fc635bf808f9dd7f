"""The recipe: every subcommand on tiny sizes against the local simulated core, the acceptance rule, the SFT loss
mask, resume, the user errors, and `QUICK=1 bash train.sh` end to end."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import checkpoint
import exectune
import model as guide_model
import mathsim
import run_dir
import sample
import sft
import sim_core
import sim_math
import strategy_format
from conftest import ROOT, cli, fail, reply

TINY_SFT = ["--steps", "8", "--batch-size", "4", "--eval-every", "4", "--n-layer", "1", "--n-embd", "32",
            "--n-head", "2", "--n-kv-head", "1", "--no-compile", "--max-new-tokens", "24"]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_data_tokenizer_baselines_sample(tiny_run):
    assert [len(read_jsonl(tiny_run / "data" / f"{s}.jsonl")) for s in ("train", "val", "test", "ood")] == [24, 8, 12, 6]
    train = read_jsonl(tiny_run / "data" / "train.jsonl")
    assert all(1 <= len(t["ops"]) <= 3 for t in train)                # level 1 by default
    assert os.path.exists(tiny_run / "tokenizer.tiktoken")
    results = json.load(open(tiny_run / "results.json"))
    assert [r["name"] for r in results] == ["core alone", "large core alone"]
    assert all(r["n"] == 12 and r["n_ood"] == 6 for r in results)
    for r in results:              # the row's accuracies are the shares of correct per-task rows of each split
        rows = read_jsonl(tiny_run / "eval" / ("core-alone.jsonl" if r["name"] == "core alone" else
                                               "large-core-alone.jsonl"))
        for split, key in (("test", "accuracy"), ("ood", "accuracy_ood")):
            split_rows = [x for x in rows if x["split"] == split]
            assert r[key] == sum(x["correct"] for x in split_rows) / len(split_rows)
    alone = read_jsonl(tiny_run / "alone_train.jsonl")
    assert len(alone) == 24 and all(r["runs"] == 3 for r in alone)
    assert all(r["majority_correct"] == (r["correct"] >= 2) for r in alone)
    raw, accepted = read_jsonl(tiny_run / "raw.jsonl"), read_jsonl(tiny_run / "accepted.jsonl")
    assert len(raw) == 24 * 3                                  # every teacher strategy is kept in raw
    for r in raw:
        assert r["accepted"] == sample.is_accepted(r, 2)
    # keep=1: at most one accepted strategy per task, and it is an accepted one of that task
    assert len({a["task_id"] for a in accepted}) == len(accepted)
    accepted_raw = {(r["task_id"], r["strategy"]) for r in raw if r["accepted"]}
    assert all((a["task_id"], a["strategy"]) in accepted_raw for a in accepted)
    assert len(accepted) == len({t for t, _ in accepted_raw})
    metrics = read_jsonl(tiny_run / "metrics.jsonl")
    assert {"data", "tokenizer", "baselines", "sample"} <= {m["stage"] for m in metrics}


def test_acceptance_rule():
    ok_run = dict(correct=True, dollars=1e-4, output_tokens=10)
    bad_run = dict(correct=False, dollars=1e-4, output_tokens=10)
    good = dict(valid=True, leaks=False, runs=[ok_run, ok_run])
    assert sample.is_accepted(good, 2)
    assert not sample.is_accepted(dict(good, valid=False), 2)
    assert not sample.is_accepted(dict(good, leaks=True), 2)
    assert not sample.is_accepted(dict(good, runs=[ok_run, bad_run]), 2)
    assert not sample.is_accepted(dict(good, runs=[ok_run]), 2)      # a failed core call is not a success
    raw = [dict(task_id="a", strategy="s1", accepted=True, dollars=3.0),
           dict(task_id="a", strategy="s2", accepted=True, dollars=1.0),
           dict(task_id="a", strategy="s3", accepted=False, dollars=0.5),
           dict(task_id="a", strategy="s2", accepted=True, dollars=1.0),   # a duplicate is kept once
           dict(task_id="b", strategy="s4", accepted=True, dollars=2.0)]
    kept = sample.select_accepted(raw, keep=2)
    assert [(k["task_id"], k["strategy"]) for k in kept] == [("a", "s2"), ("a", "s1"), ("b", "s4")]
    assert len(sample.select_accepted(raw, keep=0)) == 3                 # 0: every distinct accepted one
    named = [dict(task_id="a", strategy="1. Add 3 to 4.", accepted=True, dollars=1.0),
             dict(task_id="a", strategy="1. Add the red apples to 4.", accepted=True, dollars=1.2),
             dict(task_id="a", strategy="1. Add the red apples to the green apples.", accepted=True, dollars=1.5)]
    assert [k["strategy"] for k in sample.select_accepted(named, 1)] == ["1. Add 3 to 4."]
    assert ([k["strategy"] for k in sample.select_accepted(named, 1, "handles")]
            == ["1. Add the red apples to the green apples."])
    with pytest.raises(ValueError, match="--select"):
        sample.SampleConfig(select="longest")


def test_numbers_named_counts_operands_not_step_numbers():
    assert strategy_format.numbers_named("<strategy>\n1. Multiply 3 by 6.\n2. Add 14 to the result of step 1.\n"
                               "3. Add the apples to it.\n</strategy>") == 3
    assert strategy_format.numbers_named("1. Add the red apples to the result of step 12.") == 0


def test_deferred_is_invalid_or_abandoned():
    assert strategy_format.deferred(False, None) and strategy_format.deferred(False, "#### 3")
    assert strategy_format.deferred(True, "Step 1: 2 + 3 = 5\nStep 2 " + strategy_format.UNCLEAR_NOTE + "\n#### 9")
    assert not strategy_format.deferred(True, "Step 1: 2 + 3 = 5\n#### 5")


def test_tokenizer_text_holds_no_canonical_strategy():
    train = mathsim.generate_tasks(30, 0, "train", 1)
    text = "\n".join(exectune.training_text(train))
    assert not any(mathsim.canonical_strategy(t) in text for t in train)
    assert "the result of step" in text and "Find the quotient of" in text


def test_the_curriculum_moves_from_short_plans_to_all_of_them():
    examples = [f"e{i}" for i in range(9)]
    n_steps = [1, 3, 2, 1, 2, 3, 1, 2, 3]
    pools = [sft.curriculum_pool(examples, n_steps, step, 90) for step in (0, 29, 30, 59, 60, 89)]
    assert pools[0] == pools[1] == ["e0", "e3", "e6"]                      # a third of the steps: 1-step plans
    assert pools[2] == pools[3] == ["e0", "e2", "e3", "e4", "e6", "e7"]    # then at most 2 steps
    assert pools[4] == pools[5] == examples                                 # then all
    # quantiles, not step counts: at level 2 (2-6 steps) the first third is not empty
    assert sft.curriculum_pool(examples, [n + 3 for n in n_steps], 0, 90) == ["e0", "e3", "e6"]


def test_sft_with_the_curriculum(tiny_run, core_url, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert cli(run, core_url, "sft", "--data", "raw", "--curriculum", *TINY_SFT) == 0
    assert json.load(open(run / "config.json"))["sft-raw"]["curriculum"] is True
    assert (run / "sft-raw" / "step-000008").exists()


def test_sft_loss_covers_strategy_tokens_only():
    examples = [([5, 6, 7], [8, 9, 2]), ([5, 6], [8, 2])]             # (prompt, strategy + EOS=2)
    inputs, targets, mask = sft.sft_batch(examples, pad_id=0)
    assert inputs.tolist() == [[5, 6, 7, 8, 9], [5, 6, 8, 0, 0]]
    assert targets.tolist() == [[6, 7, 8, 9, 2], [6, 8, 2, 0, 0]]
    assert mask.tolist() == [[False, False, True, True, True], [False, True, True, False, False]]
    # the loss must not move when the model is asked to predict prompt tokens differently
    torch.manual_seed(0)
    net = guide_model.Guide(guide_model.GuideConfig(vocab_size=16, n_layer=1, n_embd=16, n_head=2, n_kv_head=1,
                                                    ffn_hidden=32, max_seq_len=16))
    loss = sft.sft_loss(net, inputs, targets, mask)
    changed = targets.clone()
    changed[~mask] = 11
    assert torch.equal(loss, sft.sft_loss(net, inputs, changed, mask))
    logits = net(inputs).log_softmax(-1)
    expected = -logits.gather(-1, targets[..., None])[..., 0][mask].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the language-modelling term: the mean over the problem's own tokens (padding and strategy excluded)
    prompt = torch.tensor([[True, True, False, False, False], [True, False, False, False, False]])
    with_prompt = sft.sft_loss(net, inputs, targets, mask, prompt_weight=0.5)
    prompt_ce = -logits.gather(-1, targets[..., None])[..., 0][prompt].mean()
    assert torch.allclose(with_prompt, expected + 0.5 * prompt_ce, atol=1e-6)


def test_a_fresh_guide_starts_from_its_seeds_draw_scaled():
    cfg = guide_model.GuideConfig(vocab_size=16, n_layer=2, n_embd=16, n_head=2, n_kv_head=1, ffn_hidden=32,
                                  max_seq_len=16)
    torch.manual_seed(0)
    drawn = guide_model.Guide(cfg)
    torch.manual_seed(0)
    scaled = guide_model.Guide(cfg)
    sft.scale_initial_weights(scaled, 0.5)
    for (name, p), q in zip(drawn.named_parameters(), scaled.parameters()):
        assert torch.equal(q, p * 0.5 if p.dim() == 2 else p), name     # the tied embedding halved once, not twice
    assert scaled.lm_head.weight is scaled.tok_emb.weight
    assert sft.SFTConfig().init_scale == 0.5
    with pytest.raises(ValueError, match="--init-scale"):
        sft.SFTConfig(init_scale=0)


def test_sft_resume_matches_uninterrupted(tiny_run, core_url, tmp_path, monkeypatch):
    import shutil
    for name in ("a", "b"):
        shutil.copytree(tiny_run, tmp_path / name)
    assert cli(tmp_path / "a", core_url, "sft", "--data", "raw", *TINY_SFT) == 0

    real_lr_at = sft.lr_at

    def crash_at_step_6(step, cfg, base_lr):
        if step == 6:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg, base_lr)

    monkeypatch.setattr(sft, "lr_at", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        cli(tmp_path / "b", core_url, "sft", "--data", "raw", *TINY_SFT)
    assert sorted(os.listdir(tmp_path / "b" / "sft-raw")) == ["best", "step-000004"]   # one complete checkpoint
    monkeypatch.setattr(sft, "lr_at", real_lr_at)
    assert cli(tmp_path / "b", core_url, "sft", "--data", "raw", *TINY_SFT) == 0
    a = checkpoint.load_checkpoint(str(tmp_path / "a" / "sft-raw" / "step-000008")).state_dict()
    b = checkpoint.load_checkpoint(str(tmp_path / "b" / "sft-raw" / "step-000008")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_grpo_eval(tiny_run, core_url, capsys):
    assert cli(tiny_run, core_url, "sft", "--data", "accepted", *TINY_SFT) == 0
    curve = [m for m in read_jsonl(tiny_run / "metrics.jsonl") if m["stage"] == "sft-accepted"]
    assert [m["step"] for m in curve] == [4, 8]        # every eval interval: val loss, exact plans, exact success
    assert all(0 <= m["val_plan_exact"] <= 1 and 0 < m["val_exact_success"] < 1 and m["val_loss"] > 0 for m in curve)
    assert cli(tiny_run, core_url, "grpo", "--init", "sft-accepted/best", "--reward", "structure", "--steps", "2",
               "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "24", "--eval-every", "1",
               "--n-val-eval", "4") == 0
    assert cli(tiny_run, core_url, "eval", "--guide", "grpo-structure/best", "--name", "tiny",
               "--max-new-tokens", "24") == 0
    assert cli(tiny_run, core_url, "eval", "--guide", "teacher", "--name", "teacher") == 0
    # one strategy budget for the run: a stage asked for another stops with one line
    capsys.readouterr()
    assert cli(tiny_run, core_url, "eval", "--guide", "grpo-structure/best", "--name", "longer",
               "--max-new-tokens", "160") == 1
    assert "another decode configuration (max_new_tokens: 24 -> 160)" in capsys.readouterr().err
    assert json.load(open(tiny_run / "config.json"))["decode"] == {"max_new_tokens": 24}
    row = {r["name"]: r for r in json.load(open(tiny_run / "results.json"))}["tiny"]
    assert row["n"] == 12 and row["validity"] is not None and row["guide_tokens"] > 0
    assert "| tiny |" in open(tiny_run / "results.md").read()
    assert "accuracy on held-out phrasings" in open(tiny_run / "results.md").read()
    steps = [m for m in read_jsonl(tiny_run / "metrics.jsonl") if m["stage"] == "grpo-structure" and "reward" in m]
    assert [m["step"] for m in steps] == [0, 1]
    assert {"seconds_rollout", "seconds_core", "seconds_update", "clip_frac", "core_failures"} <= set(steps[0])
    # a finished stage is skipped, not redone
    capsys.readouterr()
    assert cli(tiny_run, core_url, "eval", "--guide", "teacher", "--name", "teacher") == 0
    assert "already in" in capsys.readouterr().out
    # a changed reward weight on the finished stage stops with one line naming that weight, never "kept"
    assert cli(tiny_run, core_url, "grpo", "--init", "sft-accepted/best", "--reward", "structure", "--steps", "2",
               "--prompts-per-step", "2", "--group-size", "3", "--eval-every", "1", "--n-val-eval", "4",
               "--weights", "harm=-1.0") == 1
    out, err = capsys.readouterr()
    assert "kept" not in out and err.count("\n") == 1 and "(weights.harm: -0.5 -> -1.0)" in err
    # a guide whose files changed since its row was written is evaluated again, never kept
    best = tiny_run / "grpo-structure" / "best"
    retrained = checkpoint.load_checkpoint(best)
    with torch.no_grad():
        retrained.tok_emb.weight.add_(0.01)
    checkpoint.save_checkpoint(retrained, best)
    assert cli(tiny_run, core_url, "eval", "--guide", "grpo-structure/best", "--name", "tiny") == 0
    assert "already in" not in capsys.readouterr().out
    assert cli(tiny_run, core_url, "eval", "--guide", "grpo-structure/best", "--name", "tiny") == 0
    assert "already in" in capsys.readouterr().out
    # with the stage's outputs deleted, the new weights train anew and are recorded
    shutil.rmtree(tiny_run / "grpo-structure")
    assert cli(tiny_run, core_url, "grpo", "--init", "sft-accepted/best", "--reward", "structure", "--steps", "1",
               "--prompts-per-step", "2", "--group-size", "3", "--eval-every", "1", "--n-val-eval", "4",
               "--weights", "harm=-1.0") == 0
    assert json.load(open(tiny_run / "config.json"))["grpo-structure"]["weights"]["harm"] == -1.0
    # the table: results.md, then one JSON summary line with every row
    assert cli(tiny_run, core_url, "table", "--wall-s", "7") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["wall_s"] == 7 and {"tiny", "teacher"} <= set(summary["accuracy"])
    assert any(line.startswith("| tiny |") for line in lines)


def test_headroom_benchmark(tiny_run, core_url, capsys, monkeypatch):
    """benchmarks/headroom.py: near-greedy samples are greedy's plans, and a gate is scored from the eval files."""
    if not (tiny_run / "sft-accepted" / "best").exists():
        assert cli(tiny_run, core_url, "sft", "--data", "accepted", *TINY_SFT) == 0
    assert cli(tiny_run, core_url, "eval", "--guide", "sft-accepted/best", "--name", "headroom guide",
               "--max-new-tokens", "24") == 0
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import headroom
    monkeypatch.setattr(sys, "argv", ["headroom.py", "--run", str(tiny_run), "--guide", "sft-accepted/best",
                                      "--temperature", "0.001", "--samples", "2", "--max-new-tokens", "24",
                                      "--systems", "core-alone", "headroom-guide"])
    capsys.readouterr()
    headroom.main()
    assert torch.is_grad_enabled()                         # the benchmark leaves no global state behind
    out = capsys.readouterr().out
    greedy_right = int(out.split("greedy writes the plan for ")[1].split(" of ")[0])
    # at temperature 0.001 every sample is greedy's strategy: the same share, and none right where greedy is wrong
    assert f"{greedy_right / 8:.1%} of samples are the plan" in out
    assert f"of the {8 - greedy_right} tasks greedy gets wrong, 0 have a right sample" in out
    tasks = {t.id: t for t in run_dir.load_tasks(run_dir.Run(str(tiny_run)), "test")}
    alone = {r["id"]: r["correct"] for r in read_jsonl(tiny_run / "eval" / "core-alone.jsonl") if r["split"] == "test"}
    rows = [r for r in read_jsonl(tiny_run / "eval" / "headroom-guide.jsonl") if r["split"] == "test"]
    gated = sum(r["correct"] if mathsim.plan_matches(tasks[r["id"]], strategy_format.extract_strategy(r["strategy"])
                                                     or r["strategy"]) else alone[r["id"]] for r in rows)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert f"headroom-guide: test accuracy {accuracy:.3f}, with a perfect gate {gated / len(rows):.3f}" in out
    alone_accuracy = sum(alone.values()) / len(alone)      # the core alone has no plan: the gate defers everywhere
    assert f"core-alone: test accuracy {alone_accuracy:.3f}, with a perfect gate {alone_accuracy:.3f}" in out


def test_user_errors(tiny_run, core_url, tmp_path, capsys):
    # another configuration in the same run directory
    assert cli(tiny_run, core_url, "data", "--n-train", "25") == 1
    assert "another data configuration" in capsys.readouterr().err
    # malformed JSONL names the file and line; nothing is overwritten
    bad = tmp_path / "bad"
    os.makedirs(bad / "data")
    (bad / "data" / "test.jsonl").write_text('{"id": "a", "problem": "p", "answer": 1}\n{oops\n')
    before = (bad / "data" / "test.jsonl").read_text()
    assert cli(bad, core_url, "eval", "--guide", "none") == 1
    err = capsys.readouterr().err
    assert "test.jsonl:2: malformed JSON" in err and err.count("\n") == 1
    assert (bad / "data" / "test.jsonl").read_text() == before
    # a missing checkpoint, and an unreachable core
    assert cli(tiny_run, core_url, "eval", "--guide", "no-such-dir") == 1
    assert "no-such-dir" in capsys.readouterr().err
    dead = "http://127.0.0.1:9/v1"   # (a model never asked before: the run's cache answers what was asked)
    assert exectune.main(["eval", "--run", str(tiny_run), "--core-url", dead, "--guide", "none",
                          "--name", "dead", "--max-retries", "0", "--core-model", "never-asked"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err
    # a device this machine does not have
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as info:
            cli(tiny_run, core_url, "eval", "--guide", "none", "--device", "cuda")
        assert info.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_a_rerun_with_the_core_gone_answers_from_the_run_cache(tiny_run):
    """train.sh starts the local core on a new port each run: the cache must not care where the core listens."""
    assert exectune.main(["eval", "--run", str(tiny_run), "--core-url", "http://127.0.0.1:9/v1", "--guide", "none",
                          "--name", "core alone again", "--max-retries", "0"]) == 0
    rows = {r["name"]: r for r in json.load(open(tiny_run / "results.json"))}
    assert rows["core alone again"]["accuracy"] == rows["core alone"]["accuracy"]


def test_a_run_never_mixes_offline_worlds(tiny_run, tmp_path, capsys):
    """The run records the simulated teacher's echo rate; a stage against a server with another rate stops with one
    line before it asks anything, however much of the run is cached."""
    assert json.load(open(tiny_run / "config.json"))["world"] == {"teacher_echo": sim_math.TEACHER.echo}
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("locks"))
    os.remove(run / "sample" / "chunk-00001.jsonl")          # sample would resume: one chunk to ask again
    server, url = sim_core.start_server(teacher=dataclasses.replace(sim_math.TEACHER, echo=0.0))
    try:
        capsys.readouterr()
        assert cli(run, url + "/v1", "sample", "--k", "3", "--m", "2", "--keep", "1", "--chunk", "10") == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "another world configuration (teacher_echo: 0.7 -> 0.0)" in err
        assert cli(run, url + "/v1", "eval", "--guide", "teacher", "--name", "teacher, echo 0") == 1
    finally:
        server.shutdown()


def test_train_sh_quick(tmp_path):
    env = dict(os.environ, QUICK="1", RUN=str(tmp_path / "quick"), PYTHON=sys.executable)
    env.pop("CORE_URL", None)
    out = subprocess.run(["bash", "train.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(summary["accuracy"]) == ["core alone", "large core alone", "teacher strategies (reference)",
                                         "supervised GCoP", "advisor-style GCoP", "ExecTune w/o RL",
                                         "ExecTune without the gate", "ExecTune"]
    assert "| ExecTune |" in out.stdout and "| ExecTune without the gate |" in out.stdout


def test_a_failed_teacher_call_fails_its_task_not_runs_it_without_a_strategy(tiny_run, core_url, fake, capsys):
    """One teacher request in 18 (test and ood) fails for good (a 400): that task is counted as failed and never sent to the core.
    The teacher is a model with no known price: its dollars are unknown ("n/a"), never $0."""
    strategy = reply("<strategy>\n1. Add 1 to 2.\n</strategy>")
    teacher = fake(strategy, strategy, fail(400, "bad request", type="invalid_request_error"), strategy)
    assert cli(tiny_run, core_url, "eval", "--guide", "teacher", "--name", "flaky teacher",
               "--teacher-url", teacher.url + "/v1", "--teacher-model", "flaky-teacher") == 0
    assert len(teacher.hits) == 12 + 6
    assert "1 requests failed" in capsys.readouterr().err
    rows = read_jsonl(tiny_run / "eval" / "flaky-teacher.jsonl")
    assert len(rows) == 12 + 6 and sum(r["failed"] for r in rows) == 1
    failed = next(r for r in rows if r["failed"])
    assert failed["strategy"] is None and "correct" not in failed and "dollars" not in failed
    row = {r["name"]: r for r in json.load(open(tiny_run / "results.json"))}["flaky teacher"]
    assert row["n"] + row["n_ood"] == 17 and row["failures"] + 6 - row["n_ood"] == 1 and row["validity"] == 1.0
    assert row["teacher_dollars_per_1k"] is None and row["core_dollars_per_1k"] > 0
    table_row = next(line for line in open(tiny_run / "results.md") if line.startswith("| flaky teacher |"))
    assert table_row.rstrip().endswith("| n/a | 0.0 | n/a |")


@pytest.mark.parametrize("argv,flag", [
    (["data", "--n-train", "-1"], "--n-train"), (["sample", "--chunk", "0"], "--chunk"),
    (["sft", "--eval-every", "0"], "--eval-every"), (["sft", "--n-embd", "30", "--n-head", "4"], "--n-embd"),
    (["sft", "--min-lr-ratio", "2"], "--min-lr-ratio"), (["grpo", "--init", "x", "--group-size", "1"], "--group-size"),
    (["baselines", "--alone-runs", "0"], "--alone-runs"), (["tokenizer", "--vocab-size", "100"], "--vocab-size"),
    (["eval", "--guide", "none", "--batch-size", "0"], "--batch-size"), (["data", "--concurrency", "0"], "--concurrency"),
    (["data", "--n-val", "many"], "--n-val"),
    # a flag that would change nothing with the others given
    (["sample", "--select", "handles"], "--select"), (["sft", "--init", "hf:/x", "--init-scale", "1"], "--init-scale"),
    (["grpo", "--init", "x", "--reward", "outcome", "--weights", "harm=-1"], "--weights harm"),
    (["grpo", "--init", "x", "--weights", "vibes=1"], "--weights"),
    (["eval", "--guide", "none", "--decline-gate"], "--decline-gate"),
    (["sft", "--data", "raw", "--decline-targets"], "--decline-targets")])
def test_a_bad_flag_is_one_line_exit_2_and_leaves_the_run_untouched(tiny_run, capsys, argv, flag):
    before = {p: open(os.path.join(tiny_run, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
    with pytest.raises(SystemExit) as info:
        exectune.main([argv[0], "--run", str(tiny_run), *argv[1:]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and flag in err, err
    assert {p: open(os.path.join(tiny_run, p), "rb").read() for p in before} == before
    with pytest.raises(SystemExit):
        exectune.main([argv[0], "--run", str(tiny_run / "new"), *argv[1:]])
    assert not os.path.exists(tiny_run / "new")          # nothing created either


def test_help_says_what_each_stage_does(capsys):
    with pytest.raises(SystemExit) as info:
        exectune.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert all(f"{name} {' '.join(what.split())}" in out for name, (_, _, what) in exectune.STAGES.items())
    description = out.split("positional arguments")[0].split("...")[-1].strip()
    assert description.endswith("."), description     # a whole sentence, not the docstring's first line cut short


def test_one_writer_per_output_of_a_run(tmp_path):
    run = run_dir.Run(str(tmp_path / "r"))
    with run.writer("sample"):
        with pytest.raises(run_dir.UserError, match=r"sample is being written by pid \d+"):
            with run.writer("sample"):
                pass
        with run.writer("sft-accepted"):          # other outputs of the same run may be written at once
            pass
    with run.writer("sample"):                     # released when its holder is done
        pass


def test_a_second_process_on_the_same_stage_gets_one_line(tmp_path):
    run = run_dir.Run(str(tmp_path / "r"))
    with run.writer("data"):
        out = subprocess.run([sys.executable, "exectune.py", "data", "--run", run.path], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "being written by" in out.stderr
    assert not os.path.exists(os.path.join(run.path, "data"))


def test_an_unusable_run_directory_is_one_line(tmp_path):
    assert exectune.main(["data", "--run", ""]) == 1
    (tmp_path / "file").write_text("x")
    assert exectune.main(["data", "--run", str(tmp_path / "file" / "r")]) == 1


def test_renamed_problems_keep_their_sentences_and_carry_strategies_over():
    """mathsim.renamed: new numbers in the same sentences, the answer recomputed from the text, and a strategy's
    numbers renamed with them; a number that is no one quantity's cannot be carried over."""
    import random
    import re
    for t in mathsim.generate_tasks(40, 5, "train", level=1):
        new, carry_over = mathsim.renamed(t, random.Random(t.id), t.id + "~r0")
        assert new.id == t.id + "~r0" and new.split == t.split
        assert re.sub(r"\d+", "#", new.problem) == re.sub(r"\d+", "#", t.problem)        # the same sentences
        assert new.ops == t.ops and [q.handle for q in new.quantities] == [q.handle for q in t.quantities]
        assert [q.value for q in new.quantities] != [q.value for q in t.quantities]
        assert mathsim.read_problem(new.problem).answer == new.answer
        assert carry_over(mathsim.canonical_strategy(t, by_handle=True)) == mathsim.canonical_strategy(new, True)
        values = [q.value for q in t.quantities]
        if len(set(values)) == len(values):      # every number one quantity's: a number-naming strategy renames
            assert carry_over(mathsim.canonical_strategy(t)) == mathsim.canonical_strategy(new)
        stray = max(values) + t.answer + 1       # neither a quantity nor the answer: cannot be renamed
        assert carry_over(f"<strategy>\n1. Add {stray} and the result of step 1.\n</strategy>") is None


def test_sample_carries_accepted_strategies_over_to_renamed_problems(tmp_path, core_url):
    """sample --renamings 1: each accepted strategy carried over to a renamed copy of its problem and accepted again
    there, in accepted.jsonl beside the originals; supervised GCoP's raw.jsonl holds the teacher's strategies alone;
    SFT trains on both."""
    import random
    run = tmp_path / "run"
    assert cli(run, core_url, "data", "--n-train", "24", "--n-val", "8", "--n-test", "12", "--n-ood", "6") == 0
    assert cli(run, core_url, "tokenizer") == 0
    assert cli(run, core_url, "sample", "--k", "3", "--keep", "1", "--chunk", "10", "--renamings", "1") == 0
    raw, accepted = read_jsonl(run / "raw.jsonl"), read_jsonl(run / "accepted.jsonl")
    renamed = [r for p in sorted((run / "sample").glob("renamed-*.jsonl")) for r in read_jsonl(p)]
    tasks = {t["id"]: mathsim.MathTask.from_json(t) for t in read_jsonl(run / "renamed_tasks.jsonl")}
    originals = {t.id: t for t in run_dir.load_tasks(run_dir.Run(str(run)), "train")}
    assert renamed and not any("~" in r["task_id"] for r in raw)
    for r in renamed:                    # the copy and the strategy are what mathsim.renamed makes of an accepted one
        source = r["task_id"].split("~")[0]
        assert r["task_id"] == source + "~r0" and r["renamed_from"] == source
        new, carry_over = mathsim.renamed(originals[source], random.Random(f"{source} renaming 0"), r["task_id"])
        assert r["task"] == new.to_json()
        assert r["strategy"] in {carry_over(x["strategy"]) for x in raw if x["task_id"] == source and x["accepted"]}
        assert r["accepted"] == sample.is_accepted(r, 2) and r["accepted"] == (r["valid"] and not r["leaks"] and all(
            x["correct"] for x in r["runs"]) and len(r["runs"]) == 2)
    kept = [r for r in accepted if "~" in r["task_id"]]
    # --keep 1: one per renamed problem with an accepted strategy, and those problems are in renamed_tasks.jsonl
    assert kept and sorted(r["task_id"] for r in kept) == sorted({r["task_id"] for r in renamed if r["accepted"]})
    assert {r["task_id"] for r in kept} == set(tasks)
    assert not any(r["accepted"] for r in renamed if r["leaks"] or not r["valid"])
    examples = sft.sft_examples(run_dir.Run(str(run)), run_dir.load_tokenizer(run_dir.Run(str(run))), "accepted",
                                   list(originals.values()), 1024)[0]
    assert len(examples) == len(accepted)         # every kept strategy, renamed ones included, is an example


def test_runs_table_benchmark(monkeypatch):
    """benchmarks/runs_table.py: a column per run, a row per system, and stage times from metrics lines."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import runs_table
    row = dict(name="ExecTune", accuracy=0.5, accuracy_ci=(0.4, 0.6), executability=0.9, core_dollars_per_1k=0.2,
               teacher_dollars_per_1k=0.0)
    large = dict(row, name="large core alone", executability=None, core_dollars_per_1k=1.0)
    text = runs_table.runs_table({"a": [large, row], "b": [large]})
    assert text.splitlines()[-1] == "| ExecTune | 0.500 (0.400–0.600) · 0.90 · 0.20× | — |"
    rows = [dict(stage="data", time=0), dict(stage="sample", time=60), dict(stage="sft-raw", time=100),
            dict(stage="sft-accepted", time=160), dict(stage="eval", time=170)]
    assert runs_table.stage_times(rows) == [("data", 0), ("sample", 60), ("sft, both guides", 100), ("eval", 10)]
