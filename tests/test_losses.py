"""The pure losses against an independent float64 reference, and their properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlightning.losses import (
    distillation_loss,
    distillation_terms,
    dp_kd_loss,
    dp_kd_terms,
    kd_loss,
    teacher_selection_mask,
)

GOLDEN = json.loads((Path(__file__).parent / "golden_losses.json").read_text())


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ref_kd(z_s: np.ndarray, z_t: np.ndarray, temperature: float) -> float:
    """T^2 * mean_n sum_c p_t (log p_t - log p_s), written out in float64."""
    p_t, p_s = _softmax(z_t, temperature), _softmax(z_s, temperature)
    return float(temperature**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))


def ref_ce(z: np.ndarray, y: np.ndarray) -> float:
    p = _softmax(z, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def _random(seed: int, n: int = 16, c: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, generator=g) * 3,
        torch.randn(n, c, generator=g) * 3,
        torch.randint(0, c, (n,), generator=g),
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 16.0])
def test_kd_loss_matches_float64_reference(seed: int, temperature: float) -> None:
    z_s, z_t, _ = _random(seed)
    expected = ref_kd(z_s.double().numpy(), z_t.double().numpy(), temperature)
    assert kd_loss(z_s, z_t, temperature).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert kd_loss(z_s.double(), z_t.double(), temperature).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_matches_reference(alpha: float) -> None:
    z_s, z_t, y = _random(11)
    zs, zt, yy = z_s.double().numpy(), z_t.double().numpy(), y.numpy()
    expected = (1 - alpha) * ref_ce(zs, yy) + alpha * ref_kd(zs, zt, 2.0)
    assert distillation_loss(z_s, z_t, y, 2.0, alpha).item() == pytest.approx(expected, rel=1e-5)
    terms = distillation_terms(z_s, z_t, y, 2.0, alpha)
    assert terms["loss_ce"].item() == pytest.approx(ref_ce(zs, yy), rel=1e-5)
    assert terms["loss_kd"].item() == pytest.approx(ref_kd(zs, zt, 2.0), rel=1e-5)


def test_kd_loss_is_zero_when_logits_agree_and_positive_otherwise() -> None:
    z_s, z_t, _ = _random(3)
    assert kd_loss(z_s, z_s.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z_s, z_s + 5.0, 3.0).item() == pytest.approx(0.0, abs=1e-5)  # softmax is shift-invariant
    assert kd_loss(z_s, z_t, 3.0).item() > 0


def test_kd_loss_t_squared_scaling() -> None:
    """kd(z_s, z_t, T) = T^2 * KL at temperature T: scaling the logits by T leaves KL fixed."""
    z_s, z_t, _ = _random(5)
    kl_at_1 = kd_loss(z_s, z_t, 1.0)
    for temperature in (2.0, 4.0, 8.0):
        assert kd_loss(z_s * temperature, z_t * temperature, temperature).item() == pytest.approx(
            temperature**2 * kl_at_1.item(), rel=1e-4
        )


def test_gradients_reach_only_the_student_logits() -> None:
    z_s, z_t, y = _random(7)
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    reference = torch.randn_like(z_s).requires_grad_(True)
    (kd_loss(z_s, z_t, 2.0) + distillation_loss(z_s, z_t, y) + dp_kd_loss(z_s, z_t, reference, y)).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None
    assert reference.grad is None


def test_kd_gradient_matches_closed_form() -> None:
    """d kd / d z_s = T (p_s - p_t) / N: an analytic check of the gradient scale."""
    z_s, z_t, _ = _random(9, n=4, c=3)
    z_s.requires_grad_(True)
    temperature = 3.0
    kd_loss(z_s, z_t, temperature).backward()
    p_s = torch.softmax(z_s.detach().double() / temperature, -1)
    p_t = torch.softmax(z_t.double() / temperature, -1)
    expected = temperature * (p_s - p_t) / z_s.shape[0]
    torch.testing.assert_close(z_s.grad.double(), expected, rtol=1e-4, atol=1e-6)


def test_teacher_selection_mask_supervised_and_unsupervised() -> None:
    z_t, z_ref, y = _random(13, n=64)
    p_t, p_ref = torch.softmax(z_t.double() / 2, -1), torch.softmax(z_ref.double() / 2, -1)
    idx = torch.arange(64)
    expected_sup = p_t[idx, y] > p_ref[idx, y]
    expected_unsup = p_t.max(-1).values > p_ref.max(-1).values
    assert torch.equal(teacher_selection_mask(z_t, z_ref, y, temperature=2.0), expected_sup)
    assert torch.equal(teacher_selection_mask(z_t, z_ref, None, temperature=2.0), expected_unsup)
    assert 0 < expected_sup.sum() < 64  # both branches exercised


@pytest.mark.parametrize("selection", ["supervised", "unsupervised"])
def test_dp_kd_matches_reference(selection: str) -> None:
    z_s, z_t, y = _random(17, n=32)
    z_ref = torch.randn(32, 7, generator=torch.Generator().manual_seed(4)) * 3
    temperature, alpha = 2.0, 0.7
    zs, zt, zr, yy = (a.double().numpy() for a in (z_s, z_t, z_ref, y))
    yy = yy.astype(int)
    p_t, p_r, p_s = _softmax(zt, temperature), _softmax(zr, temperature), _softmax(zs, temperature)
    r_t, r_r = _softmax(zt, 1.0), _softmax(zr, 1.0)  # routing compares the unsoftened probabilities
    if selection == "supervised":
        mask = r_t[np.arange(32), yy] > r_r[np.arange(32), yy]
    else:
        mask = r_t.max(1) > r_r.max(1)
    q = np.where(mask[:, None], p_t, p_r)
    kd = temperature**2 * np.mean(np.sum(q * (np.log(q) - np.log(p_s)), axis=1))
    expected = (1 - alpha) * ref_ce(zs, yy) + alpha * kd
    terms = dp_kd_terms(z_s, z_t, z_ref, y, temperature, alpha, selection)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["teacher_fraction"].item() == pytest.approx(mask.mean())


@pytest.mark.parametrize("temperature", [1.0, 4.0, 16.0])
def test_dp_kd_routing_does_not_depend_on_the_temperature(temperature: float) -> None:
    """Teacher [2, 1.9, -10] vs initial student [1.5, 0, 0], label 0: at T = 1 p_t(0) = 0.52 < p_init(0) = 0.68.

    Softened at T = 4 the comparison would flip (0.50 > 0.41); the routing stays on the T = 1 probabilities.
    """
    teacher, initial, y = torch.tensor([[2.0, 1.9, -10.0]]), torch.tensor([[1.5, 0.0, 0.0]]), torch.tensor([0])
    terms = dp_kd_terms(torch.zeros(1, 3), teacher, initial, y, temperature=temperature, alpha=1.0)
    assert terms["teacher_fraction"].item() == 0.0
    expected = kd_loss(torch.zeros(1, 3), initial, temperature)  # the target is the initial student's, softened
    assert terms["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dp_kd_with_teacher_always_chosen_equals_vanilla_kd() -> None:
    z_s, z_t, y = _random(19)
    uniform = torch.zeros_like(z_t)  # the reference is unsure everywhere
    confident = torch.nn.functional.one_hot(y, 7).float() * 50  # the teacher is certain of the true class
    assert dp_kd_loss(z_s, confident, uniform, y, 2.0, 0.6).item() == pytest.approx(
        distillation_loss(z_s, confident, y, 2.0, 0.6).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("temperature", lambda z, y: kd_loss(z, z, temperature=0.0)),
        ("temperature", lambda z, y: kd_loss(z, z, temperature=-1.0)),
        ("alpha", lambda z, y: distillation_loss(z, z, y, alpha=1.5)),
        ("alpha", lambda z, y: distillation_loss(z, z, y, alpha=-0.1)),
        ("selection", lambda z, y: dp_kd_loss(z, z, z, y, selection="oracle")),
        ("temperature", lambda z, y: kd_loss(z, z, temperature="abc")),
        ("alpha", lambda z, y: distillation_loss(z, z, y, alpha="abc")),
        ("alpha", lambda z, y: distillation_loss(z, z, y, alpha=None)),
    ],
)
def test_bad_hyperparameters_name_the_argument(name: str, call) -> None:
    z, _, y = _random(0)
    with pytest.raises(ValueError, match=name):
        call(z, y)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda case: case["name"])
def test_golden_values(case: dict) -> None:
    z_s = torch.tensor(case["student_logits"])
    z_t = torch.tensor(case["teacher_logits"])
    y = torch.tensor(case["targets"])
    terms = distillation_terms(z_s, z_t, y, case["temperature"], case["alpha"])
    for key in ("loss", "loss_ce", "loss_kd"):
        assert terms[key].item() == pytest.approx(case[key], rel=1e-5), key
