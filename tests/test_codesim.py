"""codesim: the generator and its reader, hidden tests, splits, the strategy parser, and the simulated programmer."""
import random

import pytest
import requests

import code_bench as cb
import codesim as cs
import core_client
import families
import grpo
import sim_code as sc
import sim_core
from sim_math import CHEAP, LARGE, TEACHER


def _as_read(task):
    return cs.CodesimTask("", "", task.problem, task.name, task.two_lists, task.steps, task.distractors, task.tests)


@pytest.mark.parametrize("split", cs.CODESIM_SPLITS)
def test_reader_inverts_the_generator(split):
    for task in cs.generate_codesim(300, 7, split):
        assert cs.read_codesim(task.problem) == _as_read(task), task.problem


def test_generator_is_seeded_and_shaped():
    a, b = cs.generate_codesim(20, 3, "train"), cs.generate_codesim(5, 3, "train")
    assert a[:5] == b and a != cs.generate_codesim(20, 4, "train")
    tasks = cs.generate_codesim(300, 0, "train")
    assert {len(t.steps) for t in tasks} == {2, 3, 4, 5, 6}
    assert {len(t.distractors) for t in tasks} == {0, 1, 2}
    assert {p.kind for t in tasks for p in t.steps} == {"keep", "drop", "map", "sort", "reverse", "take", "skip",
                                                        "unique", "zip", *cs.REDUCERS}
    for t in tasks:
        assert all(p.kind not in cs.REDUCERS for p in t.steps[:-1])          # a reduction only at the end
        assert t.two_lists == any(p.kind == "zip" for p in t.steps)
        inputs = [args[0] for args, _ in t.tests]
        assert len(t.tests) >= 8 and [] in inputs
        assert any(any(x < 0 for x in xs) for xs in inputs) and any(len(set(xs)) < len(xs) for xs in inputs)
    with pytest.raises(ValueError, match="split"):
        cs.generate_codesim(1, 0, "dev")
    with pytest.raises(ValueError, match="n must be"):
        cs.generate_codesim(-1, 0, "train")


def test_ood_holds_out_phrasings_that_other_splits_never_show():
    for split in ("train", "val", "test"):
        assert not any(cs.shows_held_out(t.problem) for t in cs.generate_codesim(300, 1, split))
    ood = cs.generate_codesim(300, 1, "ood")
    assert sum(cs.shows_held_out(t.problem) for t in ood) / len(ood) > 0.9


def test_reader_refuses_what_it_cannot_read():
    task = cs.generate_codesim(1, 0, "train")[0]
    for text, message in [("", "empty"), ("Hello there. Return the resulting list.", "sentence 1"),
                          (task.problem.rsplit(".", 2)[0] + ". Return it all.", "last sentence"),
                          (task.problem.replace(". ", ". Juggle the list. ", 1), "sentence 2")]:
        with pytest.raises(cs.UnreadableCode, match=message):
            cs.read_codesim(text)


def test_reference_passes_its_hidden_tests_in_the_sandbox_and_bugs_fail():
    tasks = cs.generate_codesim(25, 2, "test")
    rng = random.Random(0)
    mutants = []
    for t in tasks:
        j = rng.randrange(len(t.steps))
        bug = sc.slip(t.steps[j], rng)
        assert bug != t.steps[j]
        mutants.append(cs.render_function(t.name, t.two_lists, [p for p in t.steps[:j] + (bug,) + t.steps[j + 1:]
                                                                  if p is not None]))
    as_code = [t.code_task() for t in tasks]
    results = cb.run_tests(as_code * 2, [t.solution for t in as_code] + mutants, workers=2)
    assert [r.status for r in results[:25]] == ["passed"] * 25, [r.reason for r in results[:25]]
    caught = sum(r.status == "failed" for r in results[25:])
    assert caught >= 20, f"the hidden tests caught only {caught} of 25 single bugs"


def test_canonical_strategy_parses_back_to_the_task():
    for t in cs.generate_codesim(200, 5, "train"):
        steps, error = cs.parse_code_strategy(cs.canonical_code_strategy(t))
        assert error is None and tuple(s.prim for s in steps) == t.steps
        assert all(s.filler_words == 0 and s.key in sc.COMPREHENSION for s in steps)


@pytest.mark.parametrize("step, key, prim, filler", [
    ("Keep the even numbers.", "Keep/Filter", cs.Prim("keep", "even"), 0),
    ("Now carefully keep only the evens, please.", "Keep/Filter", cs.Prim("keep", "even"), 3),
    ("Filter the elements above -2.", "Keep/Filter", cs.Prim("keep", "gt", -2), 0),
    ("Remove the numbers divisible by 3.", "Drop/Remove", cs.Prim("drop", "div", 3), 0),
    ("Map each element by adding 4.", "Map/Apply", cs.Prim("map", "add", 4), 0),
    ("Double each element.", "Square/Double/Negate", cs.Prim("map", "double"), 0),
    ("Sort from largest to smallest.", "Sort descending", cs.Prim("sort", "desc"), 3),   # vs "Sort descending."
    ("Skip the first 2 elements.", "Take/Skip first k", cs.Prim("skip", "", 2), 0),
    ("Drop duplicates.", "Unique", cs.Prim("unique"), 0),
    ("Zip with ys by multiplying the two.", "Zip-with", cs.Prim("zip", "mul"), 0),
    ("Take the maximum, or 0 if empty.", "Max/Min", cs.Prim("max"), 0),
    ("Keep the good ones.", "Keep/Filter", None, None),          # unclear: no predicate
    ("Zip with ys.", "Zip-with", None, None),                    # unclear: no operation
    ("Frobnicate the list.", None, None, None)])                 # no verb of the lexicon
def test_strategy_steps(step, key, prim, filler):
    steps, error = cs.parse_code_strategy(f"<strategy>\n1. {step}\n</strategy>")
    assert error is None and (steps[0].key, steps[0].prim) == (key, prim)
    if filler is not None:
        assert steps[0].filler_words == filler


def test_invalid_strategies_are_refused():
    assert cs.parse_code_strategy("1. Sort ascending.")[1] == "missing <strategy> tag"
    assert "more than 12" in cs.parse_code_strategy(
        "<strategy>\n" + "".join(f"{i}. Sort ascending.\n" for i in range(1, 14)) + "</strategy>")[1]


def test_core_plans_follow_the_capability_model():
    task = next(t for t in cs.generate_codesim(50, 0, "test") if t.distractors and len(t.steps) >= 3)
    canonical = cs.canonical_code_strategy(task)
    alone = sc.code_plan(task.problem, None, CHEAP)
    assert alone.guided == () and alone.alone == task.steps
    assert sc.code_plan(task.problem, "no tags here", CHEAP) == alone
    guided = sc.code_plan(task.problem, canonical, CHEAP)
    assert guided.alone == () and [p for p, _, _ in guided.guided] == list(task.steps)
    assert all(acc == CHEAP.step_accuracy for _, _, acc in guided.guided)
    # An unclear second step: the first is followed, the rest written alone.
    lines = canonical.splitlines()
    unclear = "\n".join(lines[:2] + ["2. Keep the good ones."] + [f"{i}. Sort ascending." for i in range(3, 5)]
                        + ["</strategy>"])
    handover = sc.code_plan(task.problem, unclear, CHEAP)
    assert len(handover.guided) == 1 and handover.alone == task.steps[1:]
    p_alone = sc.p_bug_free(task.problem, None, CHEAP)
    assert p_alone == pytest.approx(CHEAP.solo_accuracy ** len(task.steps)
                                    * CHEAP.ignore_distractor ** len(task.distractors))
    assert sc.p_bug_free(task.problem, None, LARGE) > p_alone
    assert sc.p_bug_free(task.problem, "<strategy>\n1. Reverse the list.\n</strategy>", CHEAP) == 0.0  # wrong plan


def test_write_code_is_seeded_real_python():
    task = cs.generate_codesim(1, 9, "test")[0]
    a = sc.write_code(task.problem, None, CHEAP, random.Random(5))
    assert a == sc.write_code(task.problem, None, CHEAP, random.Random(5))
    namespace = {}
    exec(compile(a, "f.py", "exec"), namespace)
    assert callable(namespace[task.name])
    sources = {sc.write_code(task.problem, None, CHEAP, random.Random(s)) for s in range(200)}
    assert cs.reference_source(task) in sources and len(sources) > 3     # mostly right, sometimes a bug


def test_sampled_code_passes_at_the_rate_the_model_says():
    tasks = cs.generate_codesim(30, 11, "test")
    for core in (CHEAP, LARGE):
        for strategy in (None, "canonical"):
            items = [(t.problem, cs.canonical_code_strategy(t) if strategy else None) for t in tasks]
            measured = sum(sc.success_rates(items, core, n=48, workers=2)) / len(items)
            model = sum(sc.p_bug_free(p, s, core) for p, s in items) / len(items)
            # Bug-free code always passes; a few bugs are invisible to the tests, so measured sits at or above.
            assert model - 0.04 <= measured <= model + 0.08, (core.name, strategy, measured, model)


def test_batch_grading_agrees_with_one_program_per_function():
    task = cs.generate_codesim(3, 4, "test")[2]
    sources = sorted({sc.write_code(task.problem, None, CHEAP, random.Random(s)) for s in range(60)})[:8]
    one_by_one = [r.status == "passed" for r in cb.run_tests([task.code_task()] * len(sources), sources, workers=2)]
    assert sum(one_by_one) not in (0, len(sources)), "pick a task whose samples both pass and fail"
    assert cs.codesim_verdicts([task] * len(sources), sources) == one_by_one




def test_sim_core_serves_codesim_over_http():
    server, base = sim_core.start_server()
    try:
        tasks = cs.generate_codesim(12, 6, "test")

        def ask(model, messages, seed=0):
            return requests.post(base + "/v1/chat/completions", timeout=30, json={
                "model": model, "messages": messages, "seed": seed})

        replies = [ask("sim-core", cb.code_core_messages(t.problem, cs.canonical_code_strategy(t))) for t in tasks]
        assert all(r.status_code == 200 for r in replies)
        texts = [r.json()["choices"][0]["message"]["content"] for r in replies]
        results = cb.run_tests([t.code_task() for t in tasks], [cb.extract_code(x) for x in texts], workers=2)
        assert sum(r.status == "passed" for r in results) >= 4          # graded by running, and mostly right
        alone = ask("sim-core", cb.code_core_messages(tasks[0].problem, None)).json()
        guided = replies[0].json()
        assert alone["usage"]["completion_tokens"] > guided["usage"]["completion_tokens"]   # alone explains more
        strategies = [ask("sim-teacher", cb.code_teacher_messages(t.problem), seed=s).json()["choices"][0]["message"]
                      ["content"] for s, t in enumerate(tasks)]
        assert sum(cs.parse_code_strategy(s)[1] is None for s in strategies) >= 9
        bad = ask("sim-core", cb.code_core_messages(tasks[0].problem.replace(". ", ". Juggle the list. ", 1), None))
        assert bad.status_code == 400 and "sentence 2" in bad.json()["error"]["message"]
    finally:
        server.shutdown()


def test_teacher_strategies_vary_as_designed():
    tasks = cs.generate_codesim(200, 8, "train")
    strategies = [sc.teacher_reply(t.problem, TEACHER, random.Random(i)) for i, t in enumerate(tasks)]
    parsed = [cs.parse_code_strategy(s) for s in strategies]
    valid = sum(err is None for _, err in parsed) / len(tasks)
    leaks = sum(cb.code_leaks(s) for s in strategies) / len(tasks)
    canonical = sum(s == cs.canonical_code_strategy(t) for s, t in zip(strategies, tasks)) / len(tasks)
    assert 0.92 <= valid <= 0.98 and 0.06 <= leaks <= 0.15 and canonical < 0.1
    rates = [sc.p_bug_free(t.problem, s, CHEAP) for s, t in zip(strategies, tasks)]
    alone = [sc.p_bug_free(t.problem, None, CHEAP) for t in tasks]
    assert 0.2 < sum(rates) / len(rates) < sum(alone) / len(alone) + 0.1     # from useless to good, as a teacher's


def test_codesim_rewards_are_graded_by_running_the_core_code():
    server, base = sim_core.start_server()
    try:
        client = core_client.CoreClient(base + "/v1", "sim-core", price_in=0.8, price_out=4.0)
        task_list = cs.generate_codesim(6, 12, "train")
        strategies = [cs.canonical_code_strategy(t) for t in task_list]
        strategies[0] = "no tags"                                           # invalid: never sent to the core
        strategies[1] = strategies[1].replace("</strategy>", "```python\nx = 1\n```\n</strategy>")   # leaks code
        alone = {t.id: {"alone_majority_correct": False, "alone_dollars": 1e-4} for t in task_list}
        rewards = grpo.compute_rewards(task_list, strategies, client, alone)
        assert (rewards[0].valid, rewards[0].parts["validity"], rewards[0].correct) == (False, -1.0, False)
        assert rewards[1].leaked and rewards[1].parts["leakage"] == -0.5
        # correct is what the sandbox says about the code the core wrote, and nothing else
        replies = [client.chat(cb.code_core_messages(t.problem, s), draw=i) for i, (t, s) in
                   enumerate(zip(task_list, strategies)) if i > 0]
        verdicts = families.get("codesim").grade(task_list[1:], [r.text for r in replies])
        assert [r.correct for r in rewards[1:]] == verdicts and any(verdicts)
    finally:
        server.shutdown()


def test_selfcheck_reports_the_model_and_the_sampled_rate_for_codesim():
    out = sim_core.selfcheck(24, seed=3, family="codesim", samples=8)
    assert out["family"] == "codesim" and out["cheap_teacher"]["valid"] > 0.8
    for row in ("cheap_alone", "large_alone", "cheap_canonical", "cheap_teacher"):
        r = out[row]
        assert 0 <= r["exact"] <= 1 and 0 <= r["sampled"] <= 1 and 0 <= r["accuracy"] <= 1
        assert r["sampled"] >= r["exact"] - 0.15, (row, r)   # invisible bugs pass: sampled sits at or above
    assert out["large_alone"]["exact"] > out["cheap_alone"]["exact"]
    assert out["cheap_canonical"]["output_tokens"] < out["cheap_alone"]["output_tokens"]   # a plan: less to explain


def test_the_model_reads_a_pipeline_as_the_core_writes_it():
    """A reduction is always written in the return line, so a strategy that names one before its last step means
    that function; the capability model and the sandbox agree on which such strategies work."""
    tasks = [t for t in cs.generate_codesim(200, 2, "test") if t.steps[-1].kind in cs.REDUCERS][:20]
    strategies = []
    for i, t in enumerate(tasks):
        extra = ["Sort ascending.", "Reverse the list.", "Sum the elements."][i % 3]
        strategies.append(cs.canonical_code_strategy(t).replace("</strategy>",
                                                                f"{len(t.steps) + 1}. {extra}\n</strategy>"))
    p = [sc.p_bug_free(t.problem, s, LARGE) for t, s in zip(tasks, strategies)]
    codes = [sc.write_code(t.problem, s, LARGE, random.Random(1)) for t, s in zip(tasks, strategies)]
    # where the model says the plan is another function, the code, even written without a slip, fails
    for verdict, prob in zip(cs.codesim_verdicts(tasks, codes), p):
        if prob == 0.0:
            assert not verdict
    assert 0 < sum(x > 0 for x in p) < len(p)       # a harmless extra list step, and a harmful second reduction
