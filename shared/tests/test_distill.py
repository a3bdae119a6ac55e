from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from slimkit.distill import FrozenTeacher, feature_mse, kd_kl_loss, soft_cross_entropy
from slimkit.errors import BadInputError

S = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
T = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def _softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _hand_kl(temp: float) -> float:
    total = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p_s, p_t = _softmax(s_row, temp), _softmax(t_row, temp)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / len(S) * temp**2


def _hand_kl_terms(temp: float) -> list[list[float]]:
    """Per-element terms T^2 * p_t * log(p_t / p_s), before any reduction."""
    rows = []
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p_s, p_t = _softmax(s_row, temp), _softmax(t_row, temp)
        rows.append([pt * math.log(pt / ps) * temp**2 for pt, ps in zip(p_t, p_s)])
    return rows


def _hand_ce(temp: float) -> float:
    total = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p_s, p_t = _softmax(s_row, temp), _softmax(t_row, temp)
        total += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    return total / len(S) * temp**2


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_kl_loss_matches_hand_computation(temp: float) -> None:
    assert kd_kl_loss(S, T, temp).item() == pytest.approx(_hand_kl(temp), rel=1e-5)
    assert kd_kl_loss(S, T, temp, reduction="sum").item() == pytest.approx(_hand_kl(temp) * 2, rel=1e-5)
    terms = kd_kl_loss(S, T, temp, reduction="none")
    assert terms.shape == S.shape
    torch.testing.assert_close(terms, torch.tensor(_hand_kl_terms(temp)), rtol=1e-5, atol=1e-7)
    assert kd_kl_loss(T, T, temp).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_soft_cross_entropy_matches_hand_and_differs_from_kl_by_entropy(temp: float) -> None:
    ce = soft_cross_entropy(S, T, temp).item()
    assert ce == pytest.approx(_hand_ce(temp), rel=1e-5)
    entropy = sum(-sum(p * math.log(p) for p in _softmax(r, temp)) for r in T.tolist()) / 2 * temp**2
    assert ce == pytest.approx(kd_kl_loss(S, T, temp).item() + entropy, rel=1e-5)


def test_losses_do_not_backprop_into_teacher() -> None:
    s, t = S.clone().requires_grad_(True), T.clone().requires_grad_(True)
    (kd_kl_loss(s, t, 2.0) + soft_cross_entropy(s, t) + feature_mse(s, t)).backward()
    assert s.grad is not None and t.grad is None
    # the student's gradient is the one a constant teacher gives, and the KL one is softmax(s/T) - softmax(t/T) times T/B
    s_ref = S.clone().requires_grad_(True)
    (kd_kl_loss(s_ref, T, 2.0) + soft_cross_entropy(s_ref, T) + feature_mse(s_ref, T)).backward()
    assert s_ref.grad is not None and torch.equal(s.grad, s_ref.grad)
    s_kl = S.clone().requires_grad_(True)
    kd_kl_loss(s_kl, T, 2.0).backward()
    expected = (torch.softmax(S / 2.0, -1) - torch.softmax(T / 2.0, -1)) * 2.0 / len(S)
    torch.testing.assert_close(s_kl.grad, expected, rtol=1e-5, atol=1e-7)


def test_feature_mse_with_adapter() -> None:
    assert feature_mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    adapter = nn.Linear(2, 3, bias=False)
    adapter.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = feature_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0, 0.0]]), adapter)
    assert loss.item() == pytest.approx(9.0 / 3)
    with pytest.raises(BadInputError):
        feature_mse(torch.zeros(2), torch.zeros(3))
    with pytest.raises(BadInputError):
        kd_kl_loss(S, T, 0.0)


def test_frozen_teacher_stays_frozen() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    teacher = FrozenTeacher(net)
    outer = nn.Sequential(nn.Linear(3, 3), teacher)
    outer.train()
    assert not teacher.training and not any(m.training for m in net.modules())
    assert all(not p.requires_grad for p in net.parameters())
    stats = net[1].running_mean.clone()
    x = torch.randn(8, 3, requires_grad=True)
    y = teacher(x)
    assert not y.requires_grad and torch.equal(net[1].running_mean, stats)
    assert torch.equal(y, teacher(x))  # dropout off: deterministic


# --- second round: sequence logits [B, T, V], defaults, exact messages ----------------------

# [B=2, T=3, V=4]: the vocabulary is the last dim, and T != V so a wrong dim or a wrong reshape shows
S3 = torch.tensor(
    [
        [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 1.0]],
        [[2.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 1.0, 0.5], [1.5, 1.5, 0.0, -0.5]],
    ]
)
T3 = torch.tensor(
    [
        [[0.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, -1.0, 0.0, 0.5]],
        [[0.5, 0.0, 2.5, 1.0], [0.0, 3.0, -1.0, 0.0], [1.0, 0.0, 1.0, 2.0]],
    ]
)


def _token_terms(temp: float) -> list[list[list[float]]]:
    """T^2 * p_t * log(p_t / p_s) for every (batch, token, vocab) entry, from scratch."""
    return [
        [
            [pt * math.log(pt / ps) * temp**2 for pt, ps in zip(_softmax(t_row, temp), _softmax(s_row, temp))]
            for s_row, t_row in zip(s_seq, t_seq)
        ]
        for s_seq, t_seq in zip(S3.tolist(), T3.tolist())
    ]


def _token_ce(temp: float) -> float:
    """Mean over every (batch, token) of -sum p_t log p_s, times T^2."""
    rows = [(s, t) for s_seq, t_seq in zip(S3.tolist(), T3.tolist()) for s, t in zip(s_seq, t_seq)]
    ce = [-sum(pt * math.log(ps) for pt, ps in zip(_softmax(t, temp), _softmax(s, temp))) for s, t in rows]
    return sum(ce) / len(ce) * temp**2


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")  # torch's note on 'mean'
@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_kd_kl_loss_on_sequence_logits(temp: float) -> None:
    terms = torch.tensor(_token_terms(temp))
    none = kd_kl_loss(S3, T3, temp, reduction="none")
    assert none.shape == (2, 3, 4)
    torch.testing.assert_close(none, terms, rtol=1e-5, atol=1e-7)
    # batchmean: the KL of each token (a sum over the vocabulary), averaged over the B*T tokens
    assert kd_kl_loss(S3, T3, temp).item() == pytest.approx(terms.sum().item() / 6, rel=1e-5)
    assert kd_kl_loss(S3, T3, temp, reduction="sum").item() == pytest.approx(terms.sum().item(), rel=1e-5)
    assert kd_kl_loss(S3, T3, temp, reduction="mean").item() == pytest.approx(terms.sum().item() / 24, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_soft_cross_entropy_on_sequence_logits(temp: float) -> None:
    assert soft_cross_entropy(S3, T3, temp).item() == pytest.approx(_token_ce(temp), rel=1e-5)


def test_default_temperature_is_one() -> None:
    assert kd_kl_loss(S3, T3).item() == pytest.approx(kd_kl_loss(S3, T3, 1.0).item(), rel=1e-6)
    assert kd_kl_loss(S3, T3).item() == pytest.approx(torch.tensor(_token_terms(1.0)).sum().item() / 6, rel=1e-5)
    assert soft_cross_entropy(S3, T3).item() == pytest.approx(_token_ce(1.0), rel=1e-5)


def test_distill_messages() -> None:
    msg = "student logits (2, 3) and teacher logits (2, 4) differ"
    for loss in (kd_kl_loss, soft_cross_entropy):
        with pytest.raises(BadInputError, match=f"^{re.escape(msg)}$"):
            loss(torch.zeros(2, 3), torch.zeros(2, 4))
        with pytest.raises(BadInputError, match=f"^{re.escape('temperature must be > 0, got -1.0')}$"):
            loss(S, T, -1.0)
    with pytest.raises(BadInputError, match=f"^{re.escape('temperature must be > 0, got nan')}$"):
        kd_kl_loss(S, T, float("nan"))
    msg = "reduction must be one of batchmean, sum, mean, none, got 'avg'"
    with pytest.raises(BadInputError, match=f"^{re.escape(msg)}$"):
        kd_kl_loss(S, T, reduction="avg")
    msg = "student features (1, 3) and teacher features (1, 2) differ"
    with pytest.raises(BadInputError, match=f"^{re.escape(msg)}$"):
        feature_mse(torch.zeros(1, 2), torch.zeros(1, 2), nn.Linear(2, 3))


class _Scaled(nn.Module):
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x * scale


def test_frozen_teacher_passes_keyword_arguments() -> None:
    teacher = FrozenTeacher(_Scaled())
    assert torch.equal(teacher(torch.ones(2), scale=3.0), torch.full((2,), 3.0))
    assert teacher.train() is teacher and not teacher.training
