"""grpo.py: the loss by hand, micro-batch invariance, NaN handling, each reward part, and a short run that learns."""
import math

import pytest
import torch

import grpo

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------- the loss


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
    adv = grpo.group_advantages(rewards)
    s = math.sqrt(8 / 3) + 1e-4
    assert torch.allclose(adv[0], torch.tensor([-2 / s, 0.0, 0.0, 2 / s]))
    assert (adv[1:4] == 0).all()
    assert torch.allclose(adv[4], torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (1 + 1e-4))
    # Scoring a failure as 0 instead would change the other samples' advantages.
    assert not torch.allclose(grpo.group_advantages(rewards[:1].nan_to_num(0.0))[0, [0, 2, 3]], adv[0, [0, 2, 3]])


def test_constant_shift_per_task_cancels():
    rewards = torch.tensor([[0.0, 1.0, 1.0, -0.5], [1.0, 1.0, 0.0, 0.0]])
    shifted = rewards + torch.tensor([[0.7], [-3.0]])
    assert torch.allclose(grpo.group_advantages(rewards), grpo.group_advantages(shifted), atol=1e-5)
