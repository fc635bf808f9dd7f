"""Declining: the guide's DECLINE, what the recipe sends for it, its reward, its SFT targets and the decline gate."""
import contextlib
import io
import json
import math
import os
import sys

import pytest
import tiktoken
import torch

import evaluate
import execute
import families
import grpo
import mathsim
import model as guide_model
import run_dir
import sft
import strategy_format
import tokenizer
from conftest import cli
from test_grpo import FakeCore, part, reply

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import decline_levers  # noqa: E402

DECLINE = strategy_format.DECLINE


def test_declines_is_the_envelope_around_the_decline_text_alone():
    assert strategy_format.declines(DECLINE)
    assert strategy_format.declines(f"<strategy>  {strategy_format.DECLINE_TEXT}\n\n</strategy> trailing text")
    assert not strategy_format.declines(strategy_format.DECLINE_TEXT)                   # no envelope
    assert not strategy_format.declines(f"<strategy>\n1. {strategy_format.DECLINE_TEXT}\n</strategy>")
    assert not strategy_format.declines("<strategy>\n1. Add 2 to 3.\n</strategy>")
    assert not strategy_format.declines(None)
    # a decline is not a strategy: no family would parse it as one
    assert not strategy_format.parse_strategy(DECLINE).valid


def test_a_decline_sends_the_core_alone_request():
    task = mathsim.generate_tasks(1, 0, "test")[0]
    core = FakeCore([reply(task.answer), reply(task.answer)])
    execute.run_strategies(core, [task, task], [DECLINE, None], "core")
    assert core.requests[0] == core.requests[1] == mathsim.core_messages(task.problem, None)


@pytest.fixture(scope="module")
def task():
    return mathsim.generate_tasks(1, 0, "train")[0]


def test_structure_reward_prices_a_decline_at_the_core_alones_success_rate(task):
    core = FakeCore([reply(task.answer)])
    alone = {task.id: {"alone_majority_correct": True, "alone_rate": 2 / 3, "alone_dollars": 5.6e-4}}
    good = mathsim.canonical_strategy(task)
    r = grpo.compute_rewards([task, task], [DECLINE, good], core, alone)
    assert len(core.requests) == 1                     # the decline is priced, never run
    assert r[0].declined and not r[0].deferred and not r[0].valid and not r[1].declined
    assert (part(r[0], "decline"), part(r[0], "cost"), part(r[0], "validity")) == (pytest.approx(2 / 3), -0.1, 0.0)
    assert r[0].total == pytest.approx(2 / 3 - 0.1)
    half = grpo.compute_rewards([task], [DECLINE], FakeCore([]), alone,
                                weights=grpo.RewardWeights.parse("decline=0.5,cost_lambda=0"))
    assert part(half[0], "decline") == pytest.approx(1 / 3) and half[0].total == pytest.approx(1 / 3)
    # no core-alone run returned for the task: no price, so no reward (never a 0)
    unknown = {task.id: dict(alone[task.id], alone_rate=None)}
    assert math.isnan(grpo.compute_rewards([task], [DECLINE], FakeCore([]), unknown)[0].total)


def test_outcome_reward_runs_a_decline_as_the_core_alone(task):
    core = FakeCore([reply(task.answer)])
    r = grpo.compute_rewards([task], [DECLINE], core, {}, reward="outcome")
    assert core.requests == [mathsim.core_messages(task.problem, None)] and r[0].total == 1.0 and r[0].declined


def test_decline_targets_are_the_tasks_no_accepted_strategy_beat_the_core_alone(tmp_path):
    run = run_dir.Run(str(tmp_path))
    tasks = mathsim.generate_tasks(4, 0, "train")
    accepted = [{"task_id": tasks[0].id, "strategy": mathsim.canonical_strategy(tasks[0])}]
    run_dir.write_jsonl(run.file("accepted.jsonl"), accepted)
    # task 1: none accepted, the core alone right in 2 of 3 runs: decline; task 2: none accepted, alone right in 1
    # of 3: keep trying; task 3: none accepted, but its core-alone runs all failed (no majority): keep trying
    runs = [(3, 3), (3, 2), (3, 1), (0, 0)]
    run_dir.write_jsonl(run.file("alone_train.jsonl"), [
        dict(id=t.id, runs=n, correct=k, majority_correct=n > 0 and k > n / 2, dollars=1e-4)
        for t, (n, k) in zip(tasks, runs)])
    tok = sft_tokenizer()
    examples = sft.decline_examples(run, tok, tasks, max_len=1024)
    assert len(examples) == 1
    prompt, completion = examples[0]
    assert tok.decode(prompt).endswith(strategy_format.guide_prompt(tasks[1].problem))
    assert tok.decode(completion[:-1]) == DECLINE and completion[-1] == tok.encode_single_token("<|eos|>")


def sft_tokenizer():
    tasks = mathsim.generate_tasks(30, 0, "train")
    ranks = tokenizer.train_tokenizer([strategy_format.guide_prompt(t.problem) for t in tasks] + [DECLINE], 400)
    return tiktoken.Encoding("test", pat_str=tokenizer.PAT_STR, mergeable_ranks=ranks,
                             special_tokens={s: len(ranks) + i for i, s in enumerate(tokenizer.SPECIAL_TOKENS)})


def tiny_guide(vocab):
    torch.manual_seed(0)
    return guide_model.Guide(guide_model.GuideConfig(vocab_size=vocab, n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                                     max_seq_len=512))


def test_problem_surprise_is_the_same_batched_and_alone():
    tok = sft_tokenizer()
    guide = tiny_guide(tok.n_vocab)
    tasks = mathsim.generate_tasks(5, 0, "test")          # problems of different lengths: padding in a batch
    batched = evaluate.problem_surprise(guide, tok, tasks, batch_size=5)
    alone = [evaluate.problem_surprise(guide, tok, [t], batch_size=1)[0] for t in tasks]
    assert batched == pytest.approx(alone, rel=1e-5) and len({round(x, 5) for x in batched}) == 5
    # by hand for one task: the mean cross-entropy of each prompt token after the first
    ids = torch.tensor([families.prompt_tokens(tok, tasks[0])])
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(guide(ids)[0, :-1].float(), ids[0, 1:])
    assert batched[0] == pytest.approx(ce.item(), rel=1e-5)


def test_the_gate_declines_only_what_surprises_the_guide_more_than_every_val_problem(monkeypatch):
    tasks = mathsim.generate_tasks(6, 0, "test")
    surprise = {t.id: x for t, x in zip(tasks, [0.5, 0.9, 1.0, 1.1, 2.0, 0.1])}
    monkeypatch.setattr(evaluate, "problem_surprise", lambda guide, tok, task_list, batch: [surprise[t.id]
                                                                                          for t in task_list])
    val, test = tasks[:3], tasks[3:]
    strategies = ["a", "b", "c"]
    gated, seen, limit = evaluate.decline_gate(None, None, val, test, strategies, 8)
    assert limit == 1.0 and seen == [1.1, 2.0, 0.1] and gated == [DECLINE, DECLINE, "c"]
    assert evaluate.decline_gate(None, None, val, val, strategies, 8)[0] == strategies   # never a val problem


def test_a_declined_row_is_counted_apart_from_strategies():
    tasks = mathsim.generate_tasks(4, 0, "test")
    good = mathsim.canonical_strategy(tasks[0])
    strategies = [DECLINE, DECLINE, good, "no tags"]
    replies = [reply(t.answer) for t in tasks]
    client = FakeCore([])
    rows = evaluate.task_rows(tasks, strategies, replies, [True, False, True, False], client, [5] * 4, [0.0] * 4)
    assert [r["declined"] for r in rows] == [True, True, False, False]
    assert "valid" not in rows[0] and rows[2]["valid"] and not rows[3]["valid"]
    s = evaluate.summarize(rows, "m", "guide")
    assert s["declined_rate"] == 0.5 and s["validity"] == 0.5 and s["deferred_rate"] == 0.5 and s["accuracy"] == 0.5
    assert "| declined |" in evaluate.table([dict(s, name="g", spec=dict(core_role="core"), accuracy_ood=None)])


def test_held_out_phrasings_are_the_ood_splits_alone():
    for split in ("train", "test"):
        assert not any(mathsim.shows_held_out(t.problem) for t in mathsim.generate_tasks(200, 1, split, 1))
    ood = mathsim.generate_tasks(200, 1, "ood", 1)
    assert sum(mathsim.shows_held_out(t.problem) for t in ood) / len(ood) > 0.85


def test_eval_with_the_gate_reports_declines_on_held_out_phrasings(tiny_run, core_url):
    assert cli(tiny_run, core_url, "sft", "--data", "accepted", "--steps", "4", "--eval-every", "4",
               "--batch-size", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-kv-head", "1",
               "--no-compile", "--max-new-tokens", "24") == 0
    assert cli(tiny_run, core_url, "eval", "--guide", "sft-accepted/best", "--name", "gated", "--decline-gate",
               "--max-new-tokens", "24") == 0
    row = {r["name"]: r for r in json.load(open(tiny_run / "results.json"))}["gated"]
    assert row["decline_limit"] > 0 and 0 <= row["declined_rate"] <= 1
    assert {"declined_rate_ood", "declined_rate_ood_held_out", "declined_rate_ood_none"} <= set(row)
    rows = [json.loads(line) for line in open(tiny_run / "eval" / "gated.jsonl")]
    assert all((r["surprise"] > row["decline_limit"]) == r["declined"] for r in rows)
    assert all(r["strategy"] == DECLINE for r in rows if r["declined"])

    # benchmarks/decline_levers.py replays the gates on the ungated rows: its "surprise > val max" row is the eval's gate
    assert cli(tiny_run, core_url, "eval", "--guide", "sft-accepted/best", "--name", "plain",
               "--max-new-tokens", "24") == 0
    levers = {r["name"]: r for r in json.load(open(tiny_run / "results.json"))}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        decline_levers.main(["--run", str(tiny_run), "--guide", "sft-accepted/best", "--system", "plain",
                             "--max-new-tokens", "24"])
    table = {line.split(" | ")[0][2:]: line.strip(" |").split(" | ")[1:]
             for line in out.getvalue().splitlines() if line.startswith("| ") and not line.startswith("| gate")}
    assert list(table)[:2] == ["no gate", "surprise > val max"] and len(table) == 6
    assert float(table["no gate"][3]) == pytest.approx(levers["plain"]["accuracy"], abs=5e-4)
    declined, _, _, test_acc, _, ood_acc = table["surprise > val max"]      # an empty share prints "—"
    assert float(declined) == pytest.approx(row["declined_rate"], abs=5e-4)
    test_acc, ood_acc = float(test_acc), float(ood_acc)
    assert (test_acc, ood_acc) == pytest.approx((row["accuracy"], row["accuracy_ood"]), abs=5e-4)


def test_the_operand_check_flags_a_quantity_the_problem_never_mentions():
    problem = "Ann has 3 apples at home. Ann buys 4 apples at the shop. How many apples does Ann have?"
    grounded = "<strategy>\n1. Add the apples at home to the apples at the shop.\n</strategy>"
    absent = "<strategy>\n1. Add the apples at home to the pears in the box.\n</strategy>"
    steps = "<strategy>\n1. Add the apples at home to 4.\n2. Times the result of step 1 by 2.\n</strategy>"
    assert not decline_levers.names_an_absent_operand(grounded, problem)
    assert decline_levers.names_an_absent_operand(absent, problem)
    assert not decline_levers.names_an_absent_operand(steps, problem)
    assert not decline_levers.names_an_absent_operand("no strategy", problem)       # invalid: nothing to check


def test_a_presets_decline_targets_teach_accepted_data_alone(tmp_path):
    import exectune
    args = {data: exectune.build_parser().parse_args(["sft", "--run", str(tmp_path), "--data", data,
                                                      "--preset", "codesim"]) for data in ("accepted", "raw")}
    assert sft.sft_config(args["accepted"]).decline_targets is True
    assert sft.sft_config(args["raw"]).decline_targets is False


def test_check_config_counts_a_setting_added_since_at_its_default(tmp_path):
    run = run_dir.Run(str(tmp_path))
    before = {k: v for k, v in sft.recorded_config(sft.SFTConfig(), None).items() if k != "decline_targets"}
    run.check_config("sft-accepted", before)
    run.check_config("sft-accepted", sft.recorded_config(sft.SFTConfig(), None), defaults=sft.SFTConfig())
    assert json.load(open(run.file("config.json")))["sft-accepted"]["decline_targets"] is False
    with pytest.raises(run_dir.UserError, match="decline_targets: False -> True"):
        run.check_config("sft-accepted", sft.recorded_config(sft.SFTConfig(decline_targets=True), None),
                         outputs=str(tmp_path), defaults=sft.SFTConfig())
    # without defaults, an added setting is a change
    run2 = run_dir.Run(str(tmp_path / "two"))
    run2.check_config("sft-accepted", before)
    with pytest.raises(run_dir.UserError, match="decline_targets: None -> False"):
        run2.check_config("sft-accepted", sft.recorded_config(sft.SFTConfig(), None), outputs=str(tmp_path))
