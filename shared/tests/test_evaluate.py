from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from slimkit.errors import BadInputError
from slimkit.evaluate import top1


class _Pick(nn.Module):
    """Predicts class = first feature (as a one-hot logit); has a dropout so modes matter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(0.9)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 4).float() * self.scale + self.drop(torch.zeros(len(x), 4))


X = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1.0]])
Y = torch.tensor([0, 1, 2, 0, 3])


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_top1_exact_on_all_input_kinds(batch_size: int) -> None:
    model = _Pick()
    assert top1(model, (X, Y), batch_size=batch_size) == 3 / 5
    assert top1(model, TensorDataset(X, Y), batch_size=batch_size) == 3 / 5
    assert top1(model, DataLoader(TensorDataset(X, Y), batch_size=2)) == 3 / 5


def test_top1_restores_mode_and_no_grad() -> None:
    model = _Pick().train()
    seen: list[bool] = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training or o.requires_grad))
    top1(model, (X, Y))
    assert model.training and seen == [False]
    model.eval()
    top1(model, (X, Y))
    assert not model.training


def test_top1_hf_logits_and_errors() -> None:
    class HF(nn.Module):
        def forward(self, x: Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=nn.functional.one_hot(x[:, 0].long(), 4).float())

    assert top1(HF(), (X, Y)) == 3 / 5
    with pytest.raises(BadInputError, match="empty"):
        top1(_Pick(), (X[:0], Y[:0]))
    with pytest.raises(BadInputError, match="labelled"):
        top1(_Pick(), TensorDataset(X))
    with pytest.raises(BadInputError):
        top1(_Pick(), [1, 2, 3])
