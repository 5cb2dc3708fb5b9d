import math

import pytest
import torch

from iterdpo.losses import (bradley_terry_loss, dpo_implicit_rewards, per_token_kl, preference_stats,
                            sequence_logprobs, win_rate)


def test_bradley_terry_by_hand():
    # -log sigmoid(1) = log(1 + e^-1) = 0.31326; -log sigmoid(-2) = log(1 + e^2) = 2.12693
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    assert math.isclose(loss.item(), (0.3132617 + 2.1269280) / 2, rel_tol=1e-5)
    assert math.isclose(bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item(), math.log(2), rel_tol=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up():
    c = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(c, torch.tensor([0.0])).backward()
    assert math.isclose(c.grad.item(), -0.5, rel_tol=1e-6)  # d/dc -log sigmoid(c - r) = -(1 - sigmoid(0))


def test_sequence_logprobs_by_hand():
    # uniform logits over 4 tokens: every scored token has log-prob -log 4
    logits = torch.zeros(1, 4, 4)
    ids = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert math.isclose(sequence_logprobs(logits, ids, mask).item(), -2 * math.log(4), rel_tol=1e-6)
    # a confident prediction of token 2 at position 1 gives ~0 for that token
    logits[0, 1, 2] = 50.0
    assert math.isclose(sequence_logprobs(logits, ids, mask).item(), -math.log(4), rel_tol=1e-5)


def test_implicit_rewards_and_stats():
    r = dpo_implicit_rewards(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), beta=0.1)
    assert torch.allclose(r, torch.tensor([0.1, -0.1]))
    s = preference_stats(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert math.isclose(s["accuracy"], 0.5) and math.isclose(s["margin"], 0.0)
    assert win_rate(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0])) == 0.75
    assert math.isclose(per_token_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]), torch.tensor([2, 2])), 0.25)


def test_standard_errors_by_hand():
    from iterdpo.losses import per_token_kl, per_token_kl_se, win_rate_se

    a, b = torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 1.0])
    outcomes = torch.tensor([1.0, 0.0, 0.5, 1.0])  # win, loss, tie, win
    assert win_rate_se(a, b) == pytest.approx((outcomes.std() / 2).item())
    pol, ref, n = torch.tensor([-2.0, -4.0, -3.0]), torch.tensor([-3.0, -4.5, -3.0]), torch.tensor([2.0, 3.0, 1.0])
    kl = per_token_kl(pol, ref, n)
    assert kl == pytest.approx(1.5 / 6)
    resid = torch.tensor([1.0 - kl * 2, 0.5 - kl * 3, 0.0 - kl * 1])
    assert per_token_kl_se(pol, ref, n) == pytest.approx((resid.pow(2).sum().sqrt() / 6).item())
