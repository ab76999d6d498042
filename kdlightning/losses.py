r"""Pure distillation losses over logits.

Every function here is a pure tensor function: no Lightning, no logging, no configuration. The
methods in :mod:`kdlightning.methods` call these and nothing else for their objectives.

Notation: ``z_s`` and ``z_t`` are ``(N, C)`` logits, :math:`p^T = \mathrm{softmax}(z / T)`, ``y``
are ``(N,)`` integer labels and ``alpha`` in ``[0, 1]`` weights the distillation term. Target
logits are detached *inside* each function, so gradients only ever reach the logits being trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlightning.errors import ConfigurationError

__all__ = [
    "at_least_float32",
    "check_alpha",
    "check_temperature",
    "distillation_loss",
    "distillation_terms",
    "dp_kd_loss",
    "dp_kd_terms",
    "ensemble_logits",
    "kd_loss",
    "multi_teacher_terms",
    "teacher_selection_mask",
]

Selection = Literal["supervised", "unsupervised"]


def _as_float(value: object, name: str) -> float:
    """``value`` as a float, or ``ValueError`` naming the argument (a string like ``"abc"``, a list, None)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"`{name}` must be a number, got {value!r}.")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"`{name}` must be a number, got {value!r}.") from None


def at_least_float32(logits: Tensor) -> Tensor:
    """``logits`` in float32, or as they are when wider (float64): the precision every loss is computed in.

    Under bf16 autocast a KL of two log-softmaxes loses most digits; a float64 run stays float64 throughout.

    Examples:
        >>> import torch
        >>> [at_least_float32(torch.zeros(2, dtype=dtype)).dtype for dtype in (torch.bfloat16, torch.float64)]
        [torch.float32, torch.float64]
    """
    return logits if logits.dtype == torch.float64 else logits.float()


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` unless it is finite and ``> 0``.

    A tensor (one value per batched member, see :class:`~kdlightning.methods.BatchedMembers`) is returned as it
    is: its values were checked one by one when the members were built, and reading them here would cost a
    device sync per step.
    """
    if isinstance(temperature, Tensor):
        return temperature
    value = _as_float(temperature, name)
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"`{name}` must be a finite number > 0, got {temperature!r}.")
    return value


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` unless ``0 <= alpha <= 1`` (a tensor as it is)."""
    if isinstance(alpha, Tensor):
        return alpha
    value = _as_float(alpha, name)
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"`{name}` must lie in [0, 1] (the weight on the distillation term), got {alpha!r}.")
    return value


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    r"""Hinton et al. (2015) soft-target loss.

    .. math::
        \mathrm{kd}(z_s, z_t, T) = T^2 \cdot \frac{1}{N} \sum_n \sum_c p_{t,nc}^T
        \left(\log p_{t,nc}^T - \log p_{s,nc}^T\right)

    i.e. :math:`T^2 \cdot \mathrm{KL}(p_t^T \,\|\, p_s^T)`, summed over classes and averaged over the
    batch. The :math:`T^2` factor keeps gradient magnitudes comparable across temperatures.

    Args:
        student_logits: ``(N, C)`` logits of the network being trained.
        teacher_logits: ``(N, C)`` logits to imitate; detached, so no gradient reaches them.
        temperature: softening temperature, ``> 0``.

    Returns:
        Scalar loss (float32 or wider, whatever the input dtype).

    Examples:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> kd_loss(z, z, temperature=4.0)
        tensor(0.)
        >>> round(kd_loss(torch.zeros(1, 2), torch.tensor([[0.0, 4.0]]), temperature=2.0).item(), 4)
        1.3113
    """
    temperature = check_temperature(temperature)
    log_p_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    # KL(p_t || p_s) summed over classes and divided by N: F.kl_div(..., log_target=True, reduction="batchmean"),
    # written out because torch.func.vmap has no batching rule for kl_div (batched members evaluate it vmapped).
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum() / log_p_s.shape[0]
    return temperature**2 * kl


def distillation_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> dict[str, Tensor]:
    r"""The KD objective and its two components.

    .. math::
        \mathcal{L} = (1 - \alpha) \cdot \mathrm{CE}(z_s, y) + \alpha \cdot \mathrm{kd}(z_s, z_t, T)

    Args:
        student_logits: ``(N, C)`` logits of the network being trained.
        teacher_logits: ``(N, C)`` logits to imitate (detached inside).
        targets: ``(N,)`` integer class labels.
        temperature: softening temperature of the distillation term, ``> 0``.
        alpha: weight of the distillation term, in ``[0, 1]``.

    Returns:
        ``{"loss": total, "loss_ce": CE(z_s, y), "loss_kd": kd(z_s, z_t, T)}``.

    Examples:
        >>> import torch
        >>> z_s, z_t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
        >>> terms = distillation_terms(z_s, z_t, y, temperature=2.0, alpha=0.5)
        >>> sorted(terms)
        ['loss', 'loss_ce', 'loss_kd']
        >>> round(terms["loss"].item(), 4)  # (1 - 0.5) * log(3) + 0.5 * 0
        0.5493
    """
    alpha = check_alpha(alpha)
    ce = F.cross_entropy(at_least_float32(student_logits), targets)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return {"loss": (1.0 - alpha) * ce + alpha * kd, "loss_ce": ce, "loss_kd": kd}


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> Tensor:
    r"""Hinton et al. (2015) KD objective, :math:`(1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\,\mathrm{kd}(z_s, z_t, T)`.

    Args:
        student_logits: ``(N, C)`` logits of the network being trained.
        teacher_logits: ``(N, C)`` logits to imitate (detached inside).
        targets: ``(N,)`` integer class labels.
        temperature: softening temperature, ``> 0``.
        alpha: weight of the distillation term, in ``[0, 1]``.

    Returns:
        Scalar loss.

    Examples:
        >>> import torch
        >>> y = torch.tensor([0, 1])
        >>> z = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
        >>> round(distillation_loss(z, z, y, temperature=4.0, alpha=1.0).item(), 4)  # only the kd term: 0
        0.0
    """
    return distillation_terms(student_logits, teacher_logits, targets, temperature, alpha)["loss"]


def teacher_selection_mask(
    teacher_logits: Tensor,
    reference_logits: Tensor,
    targets: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    r"""Where the teacher is the more confident source (Roth et al., ICLR 2024, data partitioning).

    With ``targets`` (supervised): True where :math:`p_t^T(y) > p_{ref}^T(y)`, the probability of the
    true class. With ``targets=None`` (unsupervised, label-free): True where
    :math:`\max_c p_t^T > \max_c p_{ref}^T`. Ties go to the reference.

    Args:
        teacher_logits: ``(N, C)`` logits of the teacher.
        reference_logits: ``(N, C)`` logits of the reference (DP-KD's frozen initial student).
        targets: ``(N,)`` labels, or None for the unsupervised rule.
        temperature: temperature of the compared probabilities, ``> 0``.

    Returns:
        ``(N,)`` boolean mask, True where the teacher is chosen.

    Examples:
        >>> import torch
        >>> teacher = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
        >>> reference = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> teacher_selection_mask(teacher, reference, torch.tensor([1, 0]))  # true-class probability
        tensor([False,  True])
        >>> teacher_selection_mask(teacher, reference)  # maximum probability, no labels
        tensor([ True, False])
    """
    temperature = check_temperature(temperature)
    p_t = F.softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    p_ref = F.softmax(at_least_float32(reference_logits.detach()) / temperature, dim=-1)
    if targets is None:
        return p_t.amax(dim=-1) > p_ref.amax(dim=-1)
    index = targets.long().unsqueeze(-1)  # (N, 1)
    return p_t.gather(-1, index).squeeze(-1) > p_ref.gather(-1, index).squeeze(-1)


def dp_kd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    reference_logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    selection: Selection = "supervised",
) -> dict[str, Tensor]:
    r"""Data-partitioning KD ("KL-Dist + DP", Roth et al., ICLR 2024) and its components.

    Per sample the distillation target is the teacher's :math:`p_t^T` where the teacher is more
    confident, else the reference's (the frozen initial student) :math:`p_{ref}^T`. Confidence is
    compared on the unsoftened probabilities (:func:`teacher_selection_mask` at :math:`T = 1`), so the
    routing does not depend on the temperature; only the targets are softened:

    .. math::
        \mathcal{L} = (1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\, T^2\, \mathrm{KL}(q^T \,\|\, p_s^T),
        \quad q_n = m_n\, p_{t,n}^T + (1 - m_n)\, p_{ref,n}^T

    Args:
        student_logits: ``(N, C)`` logits of the network being trained.
        teacher_logits: ``(N, C)`` logits of the frozen teacher.
        reference_logits: ``(N, C)`` logits of the frozen initial student.
        targets: ``(N,)`` labels (used by the CE term, and by ``selection="supervised"``).
        temperature: softening temperature of the targets and the student, ``> 0`` (not of the routing).
        alpha: weight of the distillation term, in ``[0, 1]``.
        selection: ``"supervised"`` compares the true-class probability, ``"unsupervised"`` the
            maximum probability (no labels needed for routing).

    Returns:
        ``{"loss", "loss_ce", "loss_kd", "teacher_fraction"}``; ``teacher_fraction`` is the share of
        samples routed to the teacher.

    Examples:
        >>> import torch
        >>> z = torch.zeros(2, 2)
        >>> teacher = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
        >>> reference = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> terms = dp_kd_terms(z, teacher, reference, torch.tensor([0, 1]))
        >>> terms["teacher_fraction"]
        tensor(0.5000)
    """
    if selection not in ("supervised", "unsupervised"):
        raise ConfigurationError(f"`selection` must be 'supervised' or 'unsupervised', got {selection!r}.")
    # Routing compares the unsoftened (T = 1) probabilities, as Roth et al. do; only the targets are softened,
    # so which source a sample learns from never depends on the temperature.
    mask = teacher_selection_mask(teacher_logits, reference_logits, targets if selection == "supervised" else None)
    # Routing logits (not probabilities) is exact: softmax(z / T) is taken per row afterwards.
    routed = torch.where(mask.unsqueeze(-1), teacher_logits.detach(), reference_logits.detach())  # (N, C)
    terms = distillation_terms(student_logits, routed, targets, temperature, alpha)
    terms["teacher_fraction"] = mask.float().mean()
    return terms


def dp_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    reference_logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    selection: Selection = "supervised",
) -> Tensor:
    r"""Scalar data-partitioning KD loss; see :func:`dp_kd_terms` for the formula and arguments.

    Examples:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> dp_kd_loss(z, z, z, torch.tensor([0]), alpha=1.0)
        tensor(0.)
    """
    return dp_kd_terms(student_logits, teacher_logits, reference_logits, targets, temperature, alpha, selection)["loss"]


def ensemble_logits(
    teacher_logits: Sequence[Tensor], temperature: float = 4.0, weights: Sequence[float] | Tensor | None = None
) -> Tensor:
    r"""Logits whose softened prediction is the (weighted) mean of several teachers' softened predictions.

    .. math::
        \bar z = T \log \sum_k w_k\, p_k^T, \qquad \mathrm{softmax}(\bar z / T) = \sum_k w_k\, p_k^T

    with :math:`w` the ``weights`` normalised to sum to 1 (equal by default). Computed in log space
    (``logsumexp``), so it stays finite where a teacher's probability underflows. Passing
    :math:`\bar z` as the teacher logits of :func:`distillation_terms` distils the average of the
    teachers' softened predictions.

    Args:
        teacher_logits: ``K`` tensors of ``(N, C)`` logits (detached inside), one per teacher.
        temperature: softening temperature, ``> 0``.
        weights: ``K`` non-negative weights (e.g. each teacher's data size), not all zero; None for equal.

    Returns:
        ``(N, C)`` float32 logits.

    Examples:
        >>> import torch
        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> torch.softmax(ensemble_logits([a, b], temperature=2.0) / 2.0, dim=-1)
        tensor([[0.5000, 0.5000]])
    """
    temperature = check_temperature(temperature)
    if len(teacher_logits) == 0:
        raise ConfigurationError("`teacher_logits` is empty: give at least one teacher's logits.")
    shapes = {tuple(z.shape) for z in teacher_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigurationError(
            f"`teacher_logits` must all be (N, C) of one shape, got shapes {[tuple(z.shape) for z in teacher_logits]}."
        )
    stacked = torch.stack([z.detach().float() for z in teacher_logits])  # (K, N, C)
    if weights is None:
        w = torch.full((len(teacher_logits),), 1.0 / len(teacher_logits), device=stacked.device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float32, device=stacked.device).flatten()
        if (
            w.numel() != len(teacher_logits)
            or bool((w < 0).any())
            or float(w.sum()) <= 0
            or not bool(torch.isfinite(w).all())
        ):
            raise ConfigurationError(
                f"`weights` must be {len(teacher_logits)} finite non-negative numbers, not all zero, got {w.tolist()}."
            )
        w = w / w.sum()
    log_p = F.log_softmax(stacked / temperature, dim=-1) + torch.log(w).view(-1, 1, 1)  # log(0) = -inf drops a teacher
    return temperature * torch.logsumexp(log_p, dim=0)


def multi_teacher_terms(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    weights: Sequence[float] | Tensor | None = None,
) -> dict[str, Tensor]:
    r"""Multi-teacher KD: distil the (weighted) average of the teachers' softened predictions.

    .. math::
        \mathcal{L} = (1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\, T^2\,
        \mathrm{KL}\Big(\textstyle\sum_k w_k p_k^T \,\Big\|\, p_s^T\Big)

    :func:`distillation_terms` with the teacher logits of :func:`ensemble_logits`.

    Args:
        student_logits: ``(N, C)`` logits of the network being trained.
        teacher_logits: ``K`` tensors of ``(N, C)`` logits, one per teacher.
        targets: ``(N,)`` labels (only the CE term uses them; with ``alpha=1`` they are not needed).
        temperature: softening temperature, ``> 0``.
        alpha: weight of the distillation term, in ``[0, 1]``.
        weights: the teachers' weights (see :func:`ensemble_logits`).

    Returns:
        ``{"loss", "loss_ce", "loss_kd"}``.

    Examples:
        >>> import torch
        >>> z = torch.zeros(1, 2)
        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> multi_teacher_terms(z, [a, b], torch.tensor([0]), temperature=2.0)["loss_kd"].abs().item() < 1e-6
        True
    """
    target = ensemble_logits(teacher_logits, temperature, weights)
    if student_logits.shape != target.shape:
        raise ConfigurationError(
            f"The student's logits {tuple(student_logits.shape)} and the teachers' {tuple(target.shape)} differ in "
            "shape: every network must output the same number of classes."
        )
    return distillation_terms(student_logits, target, targets, temperature, alpha)
