"""grpo.py: the loss by hand, micro-batch invariance, NaN handling, each reward part, and a short run that learns."""
import contextlib
import dataclasses
import math
import re

import pytest
import tiktoken
import torch

import core_client
import evaluate
import exectune
import families
import generate
import grpo
import model as guide_model
import mathsim
import sft
import sim_core
import strategy_format
import tokenizer

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------- the loss




def part(reward, name):
    """A reward's weighted term by name; 0 where compute_rewards left it out (an invalid strategy never runs)."""
    return reward.parts.get(name, 0.0)

def test_loss_by_hand_clips_both_sides_and_averages_over_step_tokens():
    # Row 0: A = +1, ratios 1.5 (clipped to 1.2) and 0.5 (not clipped: min picks 0.5). Third token is padding
    # whose log-probs are -inf, which must not leak into the loss or the gradient.
    # Row 1: A = -2, ratios 0.5 (clipped to 0.8), 1.5 (not clipped: min picks 1.5 * -2) and 1.0.
    old = torch.tensor([[0.0, 0.0, -math.inf], [-1.0, -1.0, -1.0]])
    new = (old.nan_to_num(neginf=0.0) + torch.log(torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]])))
    new.requires_grad_(True)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # per-token losses: -1.2, -0.5 | 1.6, 3.0, 2.0 -> sum 4.9 over the 5 tokens of this micro-batch
    loss, stats = grpo.grpo_loss(new, old, adv, mask, n_tokens=5)
    assert loss.item() == pytest.approx(4.9 / 5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["ratio"] == pytest.approx(1.0)
    assert stats["tokens"] == 5 and stats["kl"] is None
    loss.backward()
    # d(-ratio * A)/d new = -ratio * A on unclipped tokens, 0 on clipped ones and padding; then / n_tokens
    expected = torch.tensor([[0.0, -0.5, 0.0], [0.0, 3.0, 2.0]]) / 5
    assert torch.allclose(new.grad, expected, atol=1e-6)
    # The divisor is the whole step's token count, not this call's.
    loss10, _ = grpo.grpo_loss(new, old, adv, mask, n_tokens=10)
    assert loss10.item() == pytest.approx(4.9 / 10)


def test_k3_kl_term_by_hand():
    new = torch.zeros(1, 3, requires_grad=True)
    ref = torch.tensor([[LN2, -LN2, 0.0]])
    # k3 = exp(d) - d - 1 with d = ref - new: (1 - ln2) + (ln2 - 1/2) + 0 = 1/2 in all
    loss, stats = grpo.grpo_loss(new, torch.zeros(1, 3), torch.zeros(1), torch.ones(1, 3, dtype=torch.bool),
                                 n_tokens=3, ref_logprobs=ref, kl_beta=0.5)
    assert stats["kl"] == pytest.approx(0.5 / 3)
    assert loss.item() == pytest.approx(0.5 * 0.5 / 3)
    loss.backward()
    # d k3 / d new = 1 - exp(ref - new): -1, 1/2, 0
    assert torch.allclose(new.grad, torch.tensor([[-1.0, 0.5, 0.0]]) * 0.5 / 3, atol=1e-6)


# ----------------------------------------------------------------------------------------------- advantages


def test_nan_rewards_are_left_out_of_group_statistics():
    nan = math.nan
    rewards = torch.tensor([
        [1.0, nan, 3.0, 5.0],     # mean 3 and population std sqrt(8/3) over the three rewards that exist
        [nan, nan, nan, nan],     # no reward at all
        [nan, 2.0, nan, nan],     # a single reward: nothing to compare with
        [0.5, 0.5, nan, 0.5],     # all equal: a zero-std group
        [-1.0, 1.0, -1.0, 1.0],
    ])
    adv = grpo.group_advantages(rewards, "group")
    s = math.sqrt(8 / 3) + 1e-4
    assert torch.allclose(adv[0], torch.tensor([-2 / s, 0.0, 0.0, 2 / s]))
    assert (adv[1:4] == 0).all()
    assert torch.allclose(adv[4], torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (1 + 1e-4))
    # Scoring a failure as 0 instead would change the other samples' advantages.
    assert not torch.allclose(grpo.group_advantages(rewards[:1].nan_to_num(0.0), "group")[0, [0, 2, 3]],
                              adv[0, [0, 2, 3]])


def test_by_default_a_group_that_differs_only_in_cost_stays_small():
    # All right but for the cost term, against right-and-wrong: the default (the std of the whole step's rewards)
    # keeps the first group's advantages at the size of the cost differences; the textbook's per-group std makes
    # them as loud as the second group's.
    rewards = torch.tensor([[0.92, 0.91, 0.92, 0.91], [1.0, 0.0, 1.0, 0.0], [0.5, math.nan, 0.5, 0.5]])
    default = grpo.group_advantages(rewards, grpo.GRPOConfig().std_scale)
    assert default[0].abs().max() < 0.05 * default[1].abs().max()
    ok = ~rewards.isnan()
    step_std = ((rewards - torch.nanmean(rewards, 1, keepdim=True))[ok].pow(2).mean()).sqrt()   # about group means
    assert torch.allclose(default[1], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (step_std + 1e-4))
    assert (default[2] == 0).all()
    textbook = grpo.group_advantages(rewards, "group")
    assert torch.allclose(textbook[0].abs(), textbook[1].abs(), atol=0.03)
    unscaled = grpo.group_advantages(rewards, "none")
    assert torch.allclose(unscaled[0], torch.tensor([0.005, -0.005, 0.005, -0.005]), atol=1e-6)
    assert torch.allclose(unscaled[1], torch.tensor([0.5, -0.5, 0.5, -0.5]))
    with pytest.raises(ValueError, match="--std-scale must be one of"):
        grpo.GRPOConfig(std_scale="batch")


def test_constant_shift_per_task_cancels():
    rewards = torch.tensor([[0.0, 1.0, 1.0, -0.5], [1.0, 1.0, 0.0, 0.0]])
    shifted = rewards + torch.tensor([[0.7], [-3.0]])
    assert torch.allclose(grpo.group_advantages(rewards), grpo.group_advantages(shifted), atol=1e-5)


# ----------------------------------------------------------------------------------------------- micro-batches


def tiny_guide(seed=0, vocab_size=300):
    torch.manual_seed(seed)
    return guide_model.Guide(guide_model.GuideConfig(vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=1,
                                                     n_embd=32, ffn_hidden=64, max_seq_len=256))


def test_gradient_is_the_same_for_any_micro_batch_split():
    net = tiny_guide()
    ref = tiny_guide(seed=1).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    B, T = 6, 7
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 9, 5, 4, 12, 6)]   # ragged
    tokens = torch.randint(0, 300, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor([7, 2, 5, 1, 7, 4])[:, None]                 # (B, T)
    old = torch.where(mask, -5 + torch.rand(B, T, generator=g), 0.0)  # far from the policy: some tokens clip
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5, 0.7])
    grads = []
    for micro in (B, 2):   # one micro-batch, then three
        cfg = grpo.GRPOConfig(micro_batch_size=micro, kl_beta=0.1, temperature=0.9)
        net.zero_grad(set_to_none=True)
        stats = grpo.accumulate_gradients(net, prompts, tokens, old, mask, adv, cfg, ref_model=ref)
        assert len(stats) == B // micro and sum(s["tokens"] for s in stats) == int(mask.sum())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert grads[0].abs().max() > 1e-4                   # a real gradient, not two zeros
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-6)


class RecordingDDP(torch.nn.Module):
    """Stands for DistributedDataParallel: records, for each forward pass, whether it ran outside no_sync (DDP
    decides in the forward pass whether the backward all-reduces)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.syncing, self.forwards = module, True, []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, *args, **kwargs):
        self.forwards.append(self.syncing)
        return self.module(*args, **kwargs)


def test_only_the_last_micro_batch_syncs_under_torchrun(monkeypatch):
    monkeypatch.setattr(grpo.training, "rank_and_world", lambda: (0, 2))          # as one of two processes
    monkeypatch.setattr(grpo.training, "sum_over_processes", lambda value, device: value)
    net = RecordingDDP(tiny_guide())
    prompts = [[5, 6, 7]] * 6
    tokens = torch.randint(0, 300, (6, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 4, dtype=torch.bool)
    cfg = grpo.GRPOConfig(micro_batch_size=2)
    grpo.accumulate_gradients(net, prompts, tokens, torch.zeros(6, 4), mask, torch.ones(6), cfg)
    assert net.forwards == [False, False, True]


def test_one_strategy_budget_for_every_stage_that_decodes():
    # GRPO's rollouts, SFT's and GRPO's validation and evaluation all decode with the run's one budget
    for cls in (grpo.GRPOConfig, evaluate.EvalConfig, sft.SFTConfig):
        assert "max_new_tokens" not in {f.name for f in dataclasses.fields(cls)}, cls
    for stage in ("sft", "grpo", "eval"):
        assert evaluate.DecodeConfig in exectune.STAGES[stage][1]


# ----------------------------------------------------------------------------------------------- rewards


class FakeCore(core_client.CoreClient):
    """A CoreClient (its pricing) whose chat_many answers each request with a scripted reply; records what came."""

    price_in, price_out = 0.8, 4.0     # $ per million tokens

    def __init__(self, replies):
        self.replies, self.requests, self.draws = list(replies), [], []

    def chat_many(self, list_of_messages, draws=None, desc="core", **params):
        self.requests += list_of_messages
        self.draws += list(draws)
        return [self.replies.pop(0) for _ in list_of_messages]


def reply(answer, cached=False):
    # 100 input + 50 output tokens: 100 * 0.8e-6 + 50 * 4e-6 = $2.8e-4 (a cache hit reports 0 spent)
    return core_client.Completion(f"Step 1: ...\n#### {answer}", 100, 50, 0.0 if cached else 2.8e-4, cached, 0.01,
                                  "stop")


@pytest.fixture(scope="module")
def task():
    """A task whose answer is not a number of the problem, so stating it is a leak."""
    return next(t for t in mathsim.generate_tasks(20, 0, "train")
                if strategy_format.leaks(str(t.answer), t.problem, t.answer))


def test_each_reward_component_on_crafted_strategies(task):
    good = mathsim.canonical_strategy(task)
    leaky = good.replace("</strategy>", f"The answer is {task.answer}.\n</strategy>")
    invalid = good.replace("<strategy>", "")
    assert strategy_format.leaks(leaky, task.problem, task.answer) and not strategy_format.parse_strategy(invalid).valid
    wrong = task.answer + 1
    core = FakeCore([reply(task.answer), reply(task.answer, cached=True), reply(wrong),
                     core_client.CoreError(503, "overloaded", "retry later")])
    alone = {task.id: {"alone_majority_correct": True, "alone_dollars": 5.6e-4}}
    strategies = [good, invalid, leaky, good, good]
    r = grpo.compute_rewards([task] * 5, strategies, core, alone, draw=40)

    # The invalid strategy never reaches the core; the others go with seeds draw + their index.
    assert len(core.requests) == 4 and core.draws == [40, 42, 43, 44]
    assert all(strategy_format.parse_core_request(m)[1] != invalid for m in core.requests)

    cost = -0.1 * 2.8e-4 / 5.6e-4                     # -0.05: half the dollars of solving alone
    assert (part(r[0], "execution"), part(r[0], "cost"), r[0].total) == (1.0, pytest.approx(cost),
                                                                         pytest.approx(1 + cost))
    assert r[0].valid and r[0].correct and not (r[0].leaked or r[0].harmed)
    assert (part(r[1], "validity"), r[1].total, r[1].core_dollars) == (-1.0, -1.0, None) and not r[1].valid
    # Leak: a cache hit still prices the request by its tokens.
    assert (part(r[2], "leakage"), part(r[2], "cost"), r[2].total) == (-0.5, pytest.approx(cost),
                                                                       pytest.approx(0.5 + cost))
    assert r[2].core_dollars == pytest.approx(2.8e-4) and r[2].leaked
    # Harm: the core alone usually gets it right, the strategy made it fail.
    assert (part(r[3], "execution"), part(r[3], "harm"), r[3].total) == (0.0, -0.5, pytest.approx(-0.5 + cost))
    assert r[3].harmed
    # Core failure: no reward at all.
    assert r[4].failed and math.isnan(r[4].total) and r[4].core_dollars is None


def test_outcome_reward_sends_every_strategy_and_scores_only_correctness(task):
    good = mathsim.canonical_strategy(task)
    leaky = good.replace("</strategy>", f"The answer is {task.answer}.\n</strategy>")
    core = FakeCore([reply(task.answer), reply(task.answer), reply(task.answer + 1)])
    alone = {task.id: {"alone_majority_correct": True, "alone_dollars": 5.6e-4}}
    r = grpo.compute_rewards([task] * 3, ["no tags here", leaky, good], core, alone, reward="outcome")
    assert len(core.requests) == 3                     # the core ignores an invalid strategy and solves alone
    assert [x.total for x in r] == [1.0, 1.0, 0.0]
    assert not r[0].valid and r[1].leaked and r[2].harmed   # still reported, not scored


def test_structure_defer_prices_an_invalid_strategy_as_the_core_alone(task):
    good = mathsim.canonical_strategy(task)
    core = FakeCore([reply(task.answer), reply(task.answer + 1), reply(task.answer)])
    alone = {task.id: {"alone_majority_correct": True, "alone_dollars": 5.6e-4}}
    r = grpo.compute_rewards([task] * 3, ["no tags here", "no tags either", good], core, alone,
                             reward="structure-defer")
    assert len(core.requests) == 3                     # the invalid ones go to the core, which solves alone
    cost = -0.1 * 2.8e-4 / 5.6e-4
    assert (part(r[0], "validity"), part(r[0], "execution"), r[0].total) == (0.0, 1.0, pytest.approx(1 + cost))
    assert r[0].deferred
    assert (part(r[1], "harm"), r[1].total) == (-0.5, pytest.approx(-0.5 + cost)) and r[1].harmed   # alone failed: harm
    assert r[2].total == pytest.approx(1 + cost) and not r[2].deferred


def test_reward_input_errors(task):
    with pytest.raises(ValueError, match="baselines"):
        grpo.compute_rewards([task], ["x"], FakeCore([]), alone_stats={})
    with pytest.raises(ValueError, match="unknown reward"):
        grpo.compute_rewards([task], ["x"], FakeCore([]), reward="vibes")


def test_rewards_through_the_local_core():
    task_list = mathsim.generate_tasks(12, 1, "train")
    strategies = [mathsim.canonical_strategy(t) for t in task_list]
    strategies[0] = "1. Add 2 to 3."                  # no tags: invalid
    server, url = sim_core.start_server()
    flaky, flaky_url = sim_core.start_server(fail_rate=1.0)
    try:
        client = core_client.CoreClient(url + "/v1", "sim-core")
        alone_replies = client.chat_many([mathsim.core_messages(t.problem, None) for t in task_list])
        alone = {t.id: {"alone_majority_correct": strategy_format.extract_answer(a.text) == t.answer,
                        "alone_dollars": client.dollars(a)} for t, a in zip(task_list, alone_replies)}
        calls = client.stats()["calls"]
        r = grpo.compute_rewards(task_list, strategies, client, alone)
        assert client.stats()["calls"] - calls == 11   # one call per valid strategy
        assert r[0].total == -1.0
        assert sum(x.correct for x in r[1:]) >= 8       # canonical strategies: about 0.94 each
        # The core writes a longer chain of thought alone, so a clear strategy costs less than solving alone.
        assert all(-0.1 < part(x, "cost") < 0 for x in r[1:])
        broken = core_client.CoreClient(flaky_url + "/v1", "sim-core", max_retries=0)
        r = grpo.compute_rewards(task_list[:3], strategies[:3], broken, alone)
        assert r[0].total == -1.0 and all(x.failed and math.isnan(x.total) for x in r[1:])
    finally:
        server.shutdown()
        flaky.shutdown()


# ----------------------------------------------------------------------------------------------- grpo_step


def tokenizer_for(texts, vocab_size):
    ranks = tokenizer.train_tokenizer(texts, vocab_size)
    return tiktoken.Encoding("test", pat_str=tokenizer.PAT_STR, mergeable_ranks=ranks,
                             special_tokens={s: len(ranks) + i for i, s in enumerate(tokenizer.SPECIAL_TOKENS)})


def test_a_step_whose_core_calls_all_fail_scores_nothing_and_leaves_the_guide_alone(task, one_thread):
    tok = tokenizer_for([strategy_format.guide_prompt(task.problem)], 600)
    net = tiny_guide(vocab_size=tok.n_vocab)
    before = [p.detach().clone() for p in net.parameters()]
    failure = core_client.CoreError(None, "connection refused", "is the server running?")
    # An untrained guide writes no valid strategy, so the outcome reward (which sends everything) is used.
    cfg = grpo.GRPOConfig(prompts_per_step=2, group_size=4, reward="outcome")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    metrics = grpo.grpo_step(net, optimizer, tok, [task, task], FakeCore([failure] * 8), {}, cfg, 8, step=3)
    assert metrics["core_failures"] == 8 and metrics["reward"] is None and metrics["zero_std_groups"] == 1.0
    assert metrics["truncation_rate"] == 1.0 and metrics["completion_tokens"] == 8
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))   # all advantages 0: no update


def test_a_sixth_reward_part_is_optimised_once_it_is_a_weighted_part(task, one_thread, monkeypatch):
    """A fork adds a term as the README says: a RewardWeights field and one line that puts weight * value into
    Reward.parts. Every core reply here is wrong, so the five parts are equal within each group and teach nothing;
    the sixth (shorter strategies score higher) alone moves the guide, and at weight 0 it does not."""
    Weights = dataclasses.make_dataclass("Weights", [("brevity", float, 0.0)], bases=(grpo.RewardWeights,))
    compute_rewards = grpo.compute_rewards

    def with_brevity(task_list, strategies, client, alone_stats, weights, *args, **kwargs):
        rewards = compute_rewards(task_list, strategies, client, alone_stats, weights, *args, **kwargs)
        for r, strategy in zip(rewards, strategies):
            r.parts["brevity"] = weights.brevity * -len(strategy) / 100
        return rewards
    monkeypatch.setattr(grpo, "compute_rewards", with_brevity)
    tok = tokenizer_for([strategy_format.guide_prompt(task.problem)], 600)

    def moved(brevity):
        net = tiny_guide(vocab_size=tok.n_vocab)
        before = [p.detach().clone() for p in net.parameters()]
        cfg = grpo.GRPOConfig(prompts_per_step=2, group_size=4, reward="outcome", weights=Weights(brevity=brevity))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
        metrics = grpo.grpo_step(net, optimizer, tok, [task, task], FakeCore([reply(-1)] * 8), {}, cfg, 24, step=0)
        return any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), metrics

    changed, metrics = moved(0.5)
    assert changed and metrics["reward_execution"] == 0.0 and metrics["reward_brevity"] < 0
    assert metrics["reward"] == pytest.approx(metrics["reward_execution"] + metrics["reward_brevity"])
    assert moved(0.0)[0] is False


# ----------------------------------------------------------------------------------------------- a short run


def test_short_grpo_run_raises_the_reward_of_a_weak_guide(one_thread):
    """A tiny guide memorizes 4 tasks' canonical strategies, each beside a copy with its step numbers removed
    (invalid), so it writes an invalid strategy about half the time. Ten structure-reward GRPO steps against the
    local core must raise its mean reward, measured on 128 fresh samples before and after."""
    torch.manual_seed(0)
    task_list = sorted(mathsim.generate_tasks(40, 3, "train"), key=lambda t: len(t.problem))[:4]
    good = [mathsim.canonical_strategy(t) for t in task_list]
    bad = [re.sub(r"(?m)^\d+\. ", "- ", s) for s in good]
    assert not any(strategy_format.parse_strategy(b).valid for b in bad)
    tok = tokenizer_for([strategy_format.guide_prompt(t.problem) + s for t, s in zip(task_list, good)], 1024)
    eos = tok.encode_single_token("<|eos|>")
    net = guide_model.Guide(guide_model.GuideConfig(vocab_size=tok.n_vocab, n_layer=1, n_head=4, n_kv_head=2,
                                                    n_embd=64, ffn_hidden=192, max_seq_len=256))

    # Supervised warm start on (prompt, strategy + EOS) pairs, good and bad alike.
    pairs = [(families.prompt_tokens(tok, t), tok.encode(s, disallowed_special=()) + [eos])
             for t, g, b in zip(task_list, good, bad) for s in (g, b)]
    width = max(len(c) for _, c in pairs)
    completions = torch.tensor([c + [eos] * (width - len(c)) for _, c in pairs])                 # (8, width)
    mask = torch.arange(width)[None, :] < torch.tensor([len(c) for _, c in pairs])[:, None]      # (8, width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=4e-3, weight_decay=0.0)
    for _ in range(120):
        logprobs = generate.completion_logprobs(net, [p for p, _ in pairs], completions)
        loss = -(logprobs * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    server, url = sim_core.start_server()
    try:
        client = core_client.CoreClient(url + "/v1", "sim-core", progress=False)
        runs = 5
        alone_replies = client.chat_many([mathsim.core_messages(t.problem, None)
                                          for t in task_list for _ in range(runs)],
                                         draws=[d for _ in task_list for d in range(runs)])
        alone = {}
        for i, t in enumerate(task_list):
            replies = alone_replies[i * runs:(i + 1) * runs]
            correct = sum(strategy_format.extract_answer(r.text) == t.answer for r in replies)
            alone[t.id] = {"alone_majority_correct": correct > 2,
                           "alone_dollars": sum(client.dollars(r) for r in replies) / runs}

        def mean_reward(n=32):
            net.eval()
            generator = torch.Generator().manual_seed(123)
            texts = generate.generate_groups(
                net, [families.prompt_tokens(tok, t) for t in task_list], n,
                generate.SamplingOptions(48, eos, stop_strings=[strategy_format.STOP]),
                generator=generator, tokenizer=tok).texts
            rewards = grpo.compute_rewards([t for t in task_list for _ in range(n)], texts, client, alone,
                                           draw=10**6)
            return sum(r.total for r in rewards) / len(rewards), sum(r.valid for r in rewards) / len(rewards)

        before, valid_before = mean_reward()
        cfg = grpo.GRPOConfig(prompts_per_step=4, group_size=8, lr=3e-4, micro_batch_size=16)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
        for step in range(10):
            metrics = grpo.grpo_step(net, optimizer, tok, task_list, client, alone, cfg, 48, step)
        after, valid_after = mean_reward()
    finally:
        server.shutdown()

    assert 0.3 < valid_before < 0.7, "the warm start should write an invalid strategy about half the time"
    assert after > before + 0.25, (before, after)
    assert valid_after > valid_before
    # The step's log line: every metric grpo_step promises is there.
    for key in ("reward", "reward_validity", "reward_execution", "reward_leakage", "reward_harm", "reward_cost",
                "validity_rate", "success_rate", "leak_rate", "harm_rate", "zero_std_groups", "completion_tokens",
                "truncation_rate", "kl", "clip_frac", "core_dollars", "core_failures", "seconds_rollout",
                "seconds_core", "seconds_update"):
        assert key in metrics
    assert metrics["samples"] == 32 and metrics["core_failures"] == 0 and metrics["core_dollars"] > 0
    assert metrics["reward"] == pytest.approx(sum(metrics[f"reward_{p}"] for p in
                                                  ("validity", "execution", "leakage", "harm", "cost")))
