import math

import pytest
import torch
import torch.nn.functional as F

from ml.losses import SIM_MAX, SIM_MIN, btm_loss, cbs_loss, classification_loss, otm_loss, pole_loss, reg_loss
from ml.models.adapters import Adaptor
from ml.spec.config import LossWeights


def unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_otm_is_minus_mean_log_similarity():
    s = torch.tensor([0.5, 0.25])
    assert otm_loss(s).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def test_btm_is_minus_mean_log_one_minus_similarity():
    s = torch.tensor([0.5, 0.8])
    assert btm_loss(s).item() == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 2)


def test_similarities_are_clamped_before_the_log():
    s = torch.tensor([-0.3, 1.0])
    assert otm_loss(s).item() == pytest.approx(-(math.log(SIM_MIN) + math.log(SIM_MAX)) / 2)
    expected = -(math.log(1 - SIM_MIN) + math.log(1 - SIM_MAX)) / 2
    assert btm_loss(s).item() == pytest.approx(expected, rel=1e-4)  # 1 - 0.9999 in float32
    assert math.isfinite(cbs_loss(torch.tensor([[1.0]])).item())


def test_clamped_pairs_carry_no_gradient():
    s = torch.tensor([-0.3, 0.5], requires_grad=True)
    otm_loss(s).backward()
    assert s.grad[0] == 0 and s.grad[1] == pytest.approx(-1 / (2 * 0.5))


def test_cbs_sums_only_pairs_above_the_threshold():
    s = torch.tensor([[0.3, 0.2], [0.26, 0.9]])  # 0.26 is not above 0.26
    expected = -(math.log(1 - 0.3) + math.log(1 - 0.9))
    assert cbs_loss(s, threshold=0.26).item() == pytest.approx(expected)
    assert cbs_loss(s, threshold=0.95).item() == 0.0
    # A sum, not a mean: twice the pairs, twice the loss.
    assert cbs_loss(torch.cat([s, s]), 0.26).item() == pytest.approx(2 * expected)


def test_reg_is_the_mean_map_activation():
    maps = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    assert reg_loss(maps).item() == pytest.approx(4.0 / 8)


def test_pole_loss_combines_the_terms_with_their_weights():
    fg = torch.tensor([unit(math.acos(0.6)), unit(math.acos(0.9))])  # cosines with text [1, 0]: 0.6, 0.9
    bg = torch.tensor([unit(math.acos(0.1)), unit(math.acos(0.3))])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    background = torch.tensor([[0.0, 1.0]])  # cosine with fg = sin(acos(c))
    maps = torch.full((2, 3, 4, 4), 0.25)
    weights = LossWeights(otm=10, btm=24, cbs=1, reg=0.2)
    loss = pole_loss(fg, bg, text, background, maps, weights, cbs_threshold=0.5)
    otm = -(math.log(0.6) + math.log(0.9)) / 2
    btm = -(math.log(0.9) + math.log(0.7)) / 2
    cbs = -math.log(1 - 0.8)  # sin(acos(0.6)) = 0.8 > 0.5; sin(acos(0.9)) = 0.436 is not
    assert loss.otm.item() == pytest.approx(otm, rel=1e-5)
    assert loss.btm.item() == pytest.approx(btm, rel=1e-5)
    assert loss.cbs.item() == pytest.approx(cbs, rel=1e-5)
    assert loss.reg.item() == pytest.approx(0.25)
    assert loss.total.item() == pytest.approx(10 * otm + 24 * btm + cbs + 0.2 * 0.25, rel=1e-5)
    assert set(loss.terms()) == {"total", "otm", "btm", "cbs", "reg"}


def test_a_batch_without_tags_trains_on_the_area_term_alone():
    """Untagged images give no (image, tag) pairs: the pair terms are 0, not NaN, and the maps still learn."""
    maps = torch.full((2, 3, 4, 4), 0.25, requires_grad=True)
    no_pairs = torch.zeros(0, 2)
    loss = pole_loss(no_pairs, no_pairs, no_pairs, torch.tensor([[0.0, 1.0]]), maps, LossWeights(reg=1.0))
    assert (loss.otm.item(), loss.btm.item(), loss.cbs.item()) == (0.0, 0.0, 0.0)
    loss.total.backward()
    assert torch.isfinite(loss.total) and maps.grad.abs().sum() > 0


def test_classification_loss_is_multilabel_soft_margin():
    logits = torch.tensor([[2.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0]])
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sigmoid(2.0)) + math.log(1 - sigmoid(-1.0))) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(expected)


def test_learnable_adaptor_mixes_residual_by_the_ratio_vector():
    adaptor = Adaptor(4, "learnable", ratio=0.2)
    with torch.no_grad():
        adaptor.down.weight.copy_(torch.ones(1, 4))  # D/4 = 1 hidden unit
        adaptor.up.weight.copy_(torch.tensor([[1.0], [0.0], [-1.0], [0.5]]))
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # A(v) = relu(relu(v W1) W2) = relu([10, 0, -10, 5]) = [10, 0, 0, 5]; v* = 0.2 A(v) + 0.8 v
    expected = torch.tensor([[2.8, 1.6, 2.4, 4.2]])
    assert torch.allclose(adaptor(v), F.normalize(expected, dim=-1))
    assert adaptor.ratio.shape == (4,) and adaptor.ratio.requires_grad
    assert adaptor.down.bias is None and adaptor.up.bias is None


def test_fixed_adaptor_has_a_constant_scalar_ratio_and_none_only_normalises():
    fixed = Adaptor(8, "fixed", ratio=0.3)
    assert "ratio" not in dict(fixed.named_parameters()) and fixed.ratio.item() == pytest.approx(0.3)
    v = torch.randn(3, 8)
    adapted = F.relu(fixed.up(F.relu(fixed.down(v))))
    assert torch.allclose(fixed(v), F.normalize(0.3 * adapted + 0.7 * v, dim=-1), atol=1e-6)
    none = Adaptor(8, "none")
    assert list(none.parameters()) == [] and torch.allclose(none(v), F.normalize(v, dim=-1))


def test_adaptor_ratio_learns():
    adaptor = Adaptor(8, "learnable")
    adaptor(torch.randn(5, 8))[:, 0].sum().backward()
    assert adaptor.ratio.grad is not None and adaptor.ratio.grad.abs().sum() > 0
