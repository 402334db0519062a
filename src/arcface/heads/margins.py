"""Pure logit transforms of the margin-softmax family (no module state, no globals).

Every ``*_logits`` function maps a cosine matrix ``cos`` (B, C) -- cosines between L2-normalised
embeddings and L2-normalised class centres -- and integer ``labels`` (B,) to the scaled,
margin-adjusted logits (B, C) that go into the cross-entropy. Paper notation: theta is the angle
between an embedding and a centre, theta_y the angle to the row's own (target) centre.

Conventions shared by every function here:

* ``labels[i] == -1`` means "row i's target class is not among these columns" (a shard of a
  sharded Partial FC holds only a slice of the centres). Such a row gets the scaling only, no
  margin. The labels are indices into the columns of ``cos``, not global class ids.
* ``cos`` is clamped to [-1, 1] first (rounding can push a cosine of unit vectors past 1).
* ``sin(theta)`` is ``sqrt(1 - cos^2)`` with no gradient where ``1 - cos^2 <= 1e-12`` and ``theta``
  is ``atan2(sin(theta), cos)``, so values are exact and gradients stay finite at cos = +-1
  exactly (:func:`safe_sin`). ``acos`` is only used without gradient (branch indices).
* The functions compute in the dtype they are given; the heads feed them float32 (float64 in tests).
* A "monotonic treatment" of a target logit f(theta) means f stays decreasing on [0, pi] even where
  the raw margin formula would turn back up (cos(theta + m) rises again for theta > pi - m).

Decisions taken where the papers or the issue were silent (also stated in each docstring):

* ``combined`` with ``m1 == 1`` uses ArcFace's "th/mm" fallback (so that combined(1, m2, m3) is
  exactly arcface(m2) with an extra ``- m3``, and combined(1, 0, m3) is exactly cosface(m3));
  with ``m1 != 1`` it uses SphereFace's monotonic extension of cos(m1*theta + m2).
* ``straight_through`` keeps the forward value of the exact ArcFace (with its fallback); only the
  gradient follows arcface_torch (d logit / d cos = s for the target too). arcface_torch itself
  has no fallback for theta > pi - m, so its *forward* differs from ours in that (rare) region.
* AdaFace: the target angle theta + g_angle is clipped to [0, pi] (the official code clips to
  [eps, pi - eps] and also clamps every cosine to +-(1 - 1e-3); we keep non-target cosines exact).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "adaface_logits",
    "adaface_margin_scaler",
    "arcface_logits",
    "arcface_target",
    "combined_logits",
    "combined_target",
    "cos_multiple_angle",
    "cosface_logits",
    "curricular_update",
    "curricularface_logits",
    "gather_target",
    "magface_logits",
    "magface_margin",
    "magface_regulariser",
    "normface_logits",
    "safe_sin",
    "safe_theta",
    "sphereface_logits",
    "sphereface_psi",
    "subcenter_cosine",
]

# Below this value of 1 - cos^2 (within 1e-6 rad of 0 or pi) sin(theta) carries no gradient, which
# bounds d sin / d cos by 1e6 (float32 cannot even get that close to +-1 without being +-1).
_SIN2_EPS = 1e-12


def safe_sin(cos: Tensor) -> Tensor:
    """sin(theta) = sqrt(1 - cos^2), exact in value, finite in gradient at cos = +-1.

    Where ``1 - cos^2 <= 1e-12`` (|sin| <= 1e-6, i.e. within 1e-6 rad of 0 or pi) the value is
    taken without gradient; elsewhere the gradient is -cos/sin, so its size is at most 1e6.

    Args:
        cos: (...) cosines, assumed already clamped to [-1, 1].

    Returns:
        (...) sines, >= 0.
    """
    sin2 = 1.0 - cos * cos
    graded = torch.sqrt(torch.clamp(sin2, min=_SIN2_EPS))
    return torch.where(sin2 > _SIN2_EPS, graded, torch.sqrt(torch.clamp(sin2.detach(), min=0.0)))


def safe_theta(cos: Tensor) -> Tensor:
    """theta = arccos(cos) in [0, pi], with a finite gradient at cos = +-1.

    ``atan2(safe_sin(cos), cos)``: equal to ``acos(cos)`` (to rounding), derivative -1/sin(theta)
    except within 1e-6 rad of 0 and pi, where it is 0.

    Args:
        cos: (...) cosines in [-1, 1].

    Returns:
        (...) angles in radians.
    """
    cos = cos.clamp(-1.0, 1.0)
    return torch.atan2(safe_sin(cos), cos)


def gather_target(cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's target cosine and whether it is present.

    Args:
        cos: (B, C) cosines.
        labels: (B,) long column index of the target, or -1 where the target is not in ``cos``.

    Returns:
        ``(target, valid)``: (B,) target cosine (the column-0 value where ``valid`` is False, never
        to be used as such) and (B,) bool ``labels >= 0``.
    """
    valid = labels >= 0
    if cos.shape[1] == 0:
        return cos.new_zeros(cos.shape[0]), torch.zeros_like(valid)
    idx = labels.clamp(min=0).unsqueeze(1)  # (B, 1)
    return cos.gather(1, idx).squeeze(1), valid


def _with_target(base: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """Out-of-place: ``base`` with ``target[i]`` written at column ``labels[i]`` where labels >= 0.

    Args:
        base: (B, C) values for every column.
        labels: (B,) column index or -1.
        target: (B,) new target values.

    Returns:
        (B, C). Rows with label -1 are ``base`` unchanged (gradients included).
    """
    if base.shape[1] == 0:
        return base
    old, valid = gather_target(base, labels)
    value = torch.where(valid, target, old)  # (B,)
    return base.scatter(1, labels.clamp(min=0).unsqueeze(1), value.unsqueeze(1))


def _const(x: float | Tensor, like: Tensor) -> float | Tensor:
    """A float stays a Python float (no host-to-device copy); a tensor is cast to ``like``'s dtype."""
    return x.to(like.dtype) if isinstance(x, Tensor) else float(x)


def _row_scale(scale: float | Tensor, like: Tensor) -> Tensor | float:
    """A scalar scale, or a per-row (B,) scale shaped (B, 1) to broadcast over columns."""
    if isinstance(scale, Tensor) and scale.dim() == 1:
        return scale.to(like.dtype).unsqueeze(1)
    return scale


# --------------------------------------------------------------------------------------------
# NormFace / CosFace / ArcFace
# --------------------------------------------------------------------------------------------


def normface_logits(cos: Tensor, labels: Tensor | None = None, s: float = 64.0) -> Tensor:
    """NormFace / the ArcFace paper's NSL: ``s * cos(theta_j)`` for every column, no margin.

    Wang et al., "NormFace", https://arxiv.org/abs/1704.06369; ArcFace paper eq. (2),
    https://arxiv.org/abs/1801.07698.

    Args:
        cos: (B, C) cosines.
        labels: (B,) unused (kept for a uniform signature).
        s: scale.

    Returns:
        (B, C) logits.
    """
    del labels
    return s * cos.clamp(-1.0, 1.0)


def cosface_logits(cos: Tensor, labels: Tensor, s: float = 64.0, m: float = 0.35) -> Tensor:
    """CosFace / LMCL: target ``s * (cos(theta_y) - m)``, others ``s * cos(theta_j)``.

    Wang et al., "CosFace", https://arxiv.org/abs/1801.09414.

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        s: scale.
        m: additive cosine margin.

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    target, _ = gather_target(cos, labels)
    return s * _with_target(cos, labels, target - m)


def arcface_target(cos_y: Tensor, m: float | Tensor, easy_margin: bool = False) -> Tensor:
    """ArcFace's target value cos(theta_y + m) with insightface's fallback (unscaled).

    * default: ``cos(theta + m)`` where ``cos(theta) > cos(pi - m)``, else ``cos(theta) - m*sin(m)``
      (insightface's original "th/mm" rule; m*sin(m) = m*sin(pi - m)). This keeps the target
      decreasing on [0, pi] (with a downward jump at theta = pi - m).
    * ``easy_margin``: ``cos(theta + m)`` where ``cos(theta) > 0``, else ``cos(theta)`` (not monotonic:
      it jumps back up at theta = pi/2).

    Args:
        cos_y: (B,) target cosines in [-1, 1].
        m: additive angular margin in radians, a float or a (B,) tensor (MagFace).
        easy_margin: use the easy-margin rule instead of the fallback.

    Returns:
        (B,) target values.
    """
    cos_y = cos_y.clamp(-1.0, 1.0)
    # insightface's constants, computed literally (cos(pi - m) rounds differently from -cos(m))
    if isinstance(m, Tensor):
        m = m.to(cos_y.dtype)
        cos_m, sin_m, th, sin_pi_m = torch.cos(m), torch.sin(m), torch.cos(math.pi - m), torch.sin(math.pi - m)
    else:
        cos_m, sin_m, th, sin_pi_m = math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m)
    phi = cos_y * cos_m - safe_sin(cos_y) * sin_m  # cos(theta + m)
    if easy_margin:
        return torch.where(cos_y > 0, phi, cos_y)
    return torch.where(cos_y > th, phi, cos_y - sin_pi_m * m)


def arcface_logits(
    cos: Tensor,
    labels: Tensor,
    s: float = 64.0,
    m: float = 0.5,
    easy_margin: bool = False,
    straight_through: bool = False,
) -> Tensor:
    """ArcFace: target ``s * cos(theta_y + m)`` (with the fallback of :func:`arcface_target`).

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", eq. (3),
    https://arxiv.org/abs/1801.07698.

    ``straight_through=True`` keeps this forward value but lets the gradient skip the margin's own
    derivative, as arcface_torch does by applying the margin under ``torch.no_grad()``: then
    d logit_j / d cos_j = s for every column, target included. (arcface_torch has no fallback, so
    its forward differs from this one where theta_y > pi - m.)

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1 (no margin for that row).
        s: scale.
        m: additive angular margin (radians).
        easy_margin: see :func:`arcface_target`.
        straight_through: arcface_torch's gradient (see above).

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    target, _ = gather_target(cos, labels)
    new = arcface_target(target, m, easy_margin)
    if straight_through:
        new = target + (new - target).detach()
    return s * _with_target(cos, labels, new)


# --------------------------------------------------------------------------------------------
# SphereFace / combined
# --------------------------------------------------------------------------------------------


def cos_multiple_angle(cos: Tensor, m1: float, m2: float = 0.0) -> Tensor:
    """cos(m1 * theta + m2) from cos(theta), finite in gradient at cos = +-1.

    For an integer ``m1`` and ``m2 == 0`` the Chebyshev polynomial T_m1(cos) is used (exact and
    smooth at the ends, as in the SphereFace code); otherwise ``cos(m1 * safe_theta(cos) + m2)``.

    Args:
        cos: (...) cosines in [-1, 1].
        m1: multiplicative angular margin.
        m2: additive angular margin (radians).

    Returns:
        (...) values.
    """
    cos = cos.clamp(-1.0, 1.0)
    if m2 == 0 and float(m1).is_integer() and m1 >= 0:
        t_prev, t_cur = torch.ones_like(cos), cos
        if m1 == 0:
            return t_prev
        for _ in range(int(m1) - 1):
            t_prev, t_cur = t_cur, 2.0 * cos * t_cur - t_prev
        return t_cur
    return torch.cos(m1 * safe_theta(cos) + m2)


def _monotonic_extension(cos: Tensor, m1: float, m2: float) -> Tensor:
    """psi = (-1)^k cos(m1*theta + m2) - 2k with k = floor((m1*theta + m2) / pi).

    SphereFace's monotonic extension (Liu et al., eq. (6), https://arxiv.org/abs/1704.08063),
    generalised to an additive angular term: continuous and decreasing in theta. ``k`` is a
    piecewise constant, computed without gradient.
    """
    with torch.no_grad():
        phi = m1 * torch.acos(cos.detach().clamp(-1.0, 1.0)) + m2
        k = torch.floor(phi / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * cos_multiple_angle(cos, m1, m2) - 2.0 * k


def sphereface_psi(cos_y: Tensor, m1: int = 4) -> Tensor:
    """SphereFace's psi(theta) = (-1)^k cos(m1*theta) - 2k on [k*pi/m1, (k+1)*pi/m1] (unscaled).

    Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", eq. (6),
    https://arxiv.org/abs/1704.08063. Decreasing from 1 at theta = 0 to 1 - 2*m1 at theta = pi.

    Args:
        cos_y: (B,) target cosines.
        m1: integer multiplicative margin.

    Returns:
        (B,) psi values.
    """
    return _monotonic_extension(cos_y.clamp(-1.0, 1.0), m1, 0.0)


def sphereface_logits(
    cos: Tensor,
    labels: Tensor,
    m1: int = 4,
    lam: float | Tensor = 0.0,
    scale: float | Tensor = 1.0,
) -> Tensor:
    """SphereFace (A-Softmax) with the annealing mix of its reference code.

    Target ``scale * (lam * cos(theta_y) + psi(theta_y)) / (1 + lam)``, others ``scale * cos(theta_j)``.
    The original scales by the feature norm ||x|| (pass the (B,) norms as ``scale``); a float
    ``scale`` is the normalised-feature variant ``s``. https://arxiv.org/abs/1704.08063

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        m1: integer multiplicative margin.
        lam: annealing weight lambda (float or 0-d tensor); lam -> inf is NormFace-like.
        scale: float ``s`` or (B,) per-row scale (feature norms).

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    target, _ = gather_target(cos, labels)
    lam = _const(lam, cos)
    new = (lam * target + sphereface_psi(target, m1)) / (1.0 + lam)
    return _row_scale(scale, cos) * _with_target(cos, labels, new)


def combined_target(cos_y: Tensor, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2) -> Tensor:
    """Combined margin target ``cos(m1*theta + m2) - m3`` with a monotonic treatment (unscaled).

    * ``m1 == 1``: ArcFace's fallback (:func:`arcface_target` with m = m2) minus m3, so that
      combined(1, m2, m3) is arcface(m2) - m3 and combined(1, 0, m3) is cosface(m3) exactly.
    * ``m1 != 1``: SphereFace's extension ``(-1)^k cos(m1*theta + m2) - 2k - m3`` with
      k = floor((m1*theta + m2) / pi) (continuous, decreasing).

    ArcFace paper eq. (4), https://arxiv.org/abs/1801.07698.

    Args:
        cos_y: (B,) target cosines.
        m1: multiplicative angular margin.
        m2: additive angular margin (radians).
        m3: additive cosine margin.

    Returns:
        (B,) target values.
    """
    cos_y = cos_y.clamp(-1.0, 1.0)
    if m1 == 1:
        return arcface_target(cos_y, m2) - m3
    return _monotonic_extension(cos_y, m1, m2) - m3


def combined_logits(
    cos: Tensor, labels: Tensor, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2
) -> Tensor:
    """Combined margin: target ``s * (cos(m1*theta_y + m2) - m3)``, see :func:`combined_target`.

    ArcFace paper eq. (4), https://arxiv.org/abs/1801.07698.

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        s: scale.
        m1: multiplicative angular margin.
        m2: additive angular margin (radians).
        m3: additive cosine margin.

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    target, _ = gather_target(cos, labels)
    return s * _with_target(cos, labels, combined_target(target, m1, m2, m3))


# --------------------------------------------------------------------------------------------
# Sub-center ArcFace / CurricularFace / AdaFace / MagFace
# --------------------------------------------------------------------------------------------


def subcenter_cosine(cos_rows: Tensor, k: int) -> Tensor:
    """Per-class cosine of Sub-center ArcFace: the max over each class's K sub-centres.

    Deng et al., "Sub-center ArcFace", ECCV 2020,
    https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf.

    Args:
        cos_rows: (B, C*K) cosines against the sub-centre rows, class c at columns c*K .. c*K+K-1.
        k: sub-centres per class.

    Returns:
        (B, C) cosines.
    """
    b, r = cos_rows.shape
    if r % k:
        raise ValueError(f"{r} sub-centre columns are not a multiple of K={k}")
    return cos_rows.view(b, r // k, k).amax(dim=2)


def curricular_update(t: Tensor, target_cos: Tensor, momentum: float = 0.01, mask: Tensor | None = None) -> Tensor:
    """CurricularFace's running average ``t <- momentum * mean(cos(theta_y)) + (1 - momentum) * t``.

    Huang et al., "CurricularFace", eq. (10), https://arxiv.org/abs/2004.00288. Computed without a
    host synchronisation (no boolean indexing).

    Args:
        t: (1,) or 0-d current t.
        target_cos: (N,) target cosines of this batch.
        momentum: weight of the batch mean.
        mask: optional (N,) bool, the rows to average; t is returned unchanged when none is set
            (or when N == 0).

    Returns:
        The new t, same shape as ``t``, without gradient.
    """
    with torch.no_grad():
        target_cos = target_cos.detach().to(t.dtype)
        w = torch.ones_like(target_cos) if mask is None else mask.to(t.dtype)
        count = w.sum()
        mean = (target_cos * w).sum() / count.clamp(min=1.0)
        return torch.where(count > 0, momentum * mean + (1.0 - momentum) * t, t)


def curricularface_logits(
    cos: Tensor,
    labels: Tensor,
    t: float | Tensor,
    s: float = 64.0,
    m: float = 0.5,
    target_cos: Tensor | None = None,
) -> Tensor:
    """CurricularFace: ArcFace target, hard negatives modulated by the curriculum weight t.

    Target ``s * T(cos theta_y)`` with T the ArcFace target (fallback included). A non-target
    column j is "hard" when ``cos(theta_j) > cos(theta_y + m)``; its logit becomes
    ``s * cos(theta_j) * (t + cos(theta_j))``, else ``s * cos(theta_j)``. As in the official code the
    hardness test uses the raw cos(theta_y + m) and carries no gradient; t carries none either.
    Huang et al., eq. (8)-(9), https://arxiv.org/abs/2004.00288.

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        t: curriculum weight, float or (1,)/0-d tensor.
        s: scale.
        m: additive angular margin.
        target_cos: optional (B,) target cosine of every row, for rows whose target is not among
            these columns (a Partial FC shard); without it, rows with label -1 get no modulation.

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    target, valid = gather_target(cos, labels)
    with torch.no_grad():
        if target_cos is not None:
            ref = torch.where(valid, target.detach(), target_cos.detach().to(cos.dtype).clamp(-1.0, 1.0))
            has_ref = torch.ones_like(valid)
        else:
            ref, has_ref = target.detach(), valid
        hard_threshold = ref * math.cos(m) - safe_sin(ref) * math.sin(m)  # cos(theta_y + m), (B,)
        hard = (cos > hard_threshold.unsqueeze(1)) & has_ref.unsqueeze(1)  # (B, C)
    t = _const(t, cos)
    t = t.detach() if isinstance(t, Tensor) else t
    modulated = torch.where(hard, cos * (t + cos), cos)
    return s * _with_target(modulated, labels, arcface_target(target, m))


def adaface_margin_scaler(
    norms: Tensor, batch_mean: float | Tensor, batch_std: float | Tensor, h: float = 0.333, eps: float = 1e-3
) -> Tensor:
    """AdaFace's image-quality proxy ``g = clip(h * (||z|| - mu) / (sigma + eps), -1, 1)``.

    Kim et al., "AdaFace", eq. (9), https://arxiv.org/abs/2204.00964. The norms are clipped to
    [0.001, 100] and detached (no gradient flows through the margin into the norm).

    Args:
        norms: (B,) feature norms.
        batch_mean: running mean mu of the norms.
        batch_std: running standard deviation sigma of the norms.
        h: concentration.
        eps: stabiliser.

    Returns:
        (B,) scaler in [-1, 1].
    """
    safe = norms.detach().clamp(0.001, 100.0)
    mu = _const(batch_mean, safe)
    sigma = _const(batch_std, safe)
    mu = mu.detach() if isinstance(mu, Tensor) else mu
    sigma = sigma.detach() if isinstance(sigma, Tensor) else sigma
    return torch.clamp(h * (safe - mu) / (sigma + eps), -1.0, 1.0)


def adaface_logits(
    cos: Tensor,
    labels: Tensor,
    norms: Tensor,
    batch_mean: float | Tensor,
    batch_std: float | Tensor,
    s: float = 64.0,
    m: float = 0.4,
    h: float = 0.333,
    eps: float = 1e-3,
) -> Tensor:
    """AdaFace: target ``s * (cos(clip(theta_y + g_angle, 0, pi)) - g_add)``.

    With g from :func:`adaface_margin_scaler`: ``g_angle = -m * g`` and ``g_add = m * g + m``
    (g = -1: ArcFace(m); g = +1: CosFace(2m) with a negative angular margin). Kim et al., eq. (8),
    https://arxiv.org/abs/2204.00964. The clip is to [0, pi] (the official code uses
    [eps, pi - eps]); non-target cosines are not clamped (the official code clamps all of them).

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        norms: (B,) feature norms ||z||.
        batch_mean: running mean of the norms.
        batch_std: running standard deviation of the norms.
        s: scale.
        m: margin.
        h: concentration.
        eps: stabiliser in the scaler.

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    g = adaface_margin_scaler(norms, batch_mean, batch_std, h, eps).to(cos.dtype)  # (B,)
    target, _ = gather_target(cos, labels)
    theta = torch.clamp(safe_theta(target) - m * g, 0.0, math.pi)
    new = torch.cos(theta) - (m + m * g)
    return s * _with_target(cos, labels, new)


def magface_margin(norms: Tensor, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8) -> Tensor:
    """MagFace's magnitude-aware margin ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m``.

    a = ||x|| clamped to [l_a, u_a] (zero gradient outside, as in the official code).
    Meng et al., "MagFace", https://arxiv.org/abs/2103.06627.

    Args:
        norms: (B,) feature norms.
        l_a, u_a: magnitude bounds.
        l_m, u_m: margin bounds.

    Returns:
        (B,) margins in [l_m, u_m], differentiable in the norm.
    """
    a = norms.clamp(l_a, u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_regulariser(norms: Tensor, l_a: float = 10.0, u_a: float = 110.0) -> Tensor:
    """MagFace's magnitude regulariser ``g(a) = 1/a + a/u_a^2`` per sample (not yet weighted).

    a = ||x|| clamped to [l_a, u_a]. https://arxiv.org/abs/2103.06627

    Args:
        norms: (B,) feature norms.
        l_a, u_a: magnitude bounds.

    Returns:
        (B,) g(a).
    """
    a = norms.clamp(l_a, u_a)
    return 1.0 / a + a / (u_a * u_a)


def magface_logits(
    cos: Tensor,
    labels: Tensor,
    norms: Tensor,
    s: float = 64.0,
    l_a: float = 10.0,
    u_a: float = 110.0,
    l_m: float = 0.45,
    u_m: float = 0.8,
) -> Tensor:
    """MagFace: ArcFace target with the per-sample margin m(||x||) of :func:`magface_margin`.

    ``s * cos(theta_y + m(a))`` with ArcFace's fallback (as the official MagLinear).
    Meng et al., eq. (4), https://arxiv.org/abs/2103.06627.

    Args:
        cos: (B, C) cosines.
        labels: (B,) target column or -1.
        norms: (B,) feature norms.
        s: scale.
        l_a, u_a, l_m, u_m: see :func:`magface_margin`.

    Returns:
        (B, C) logits.
    """
    cos = cos.clamp(-1.0, 1.0)
    margin = magface_margin(norms, l_a, u_a, l_m, u_m).to(cos.dtype)  # (B,)
    target, _ = gather_target(cos, labels)
    return s * _with_target(cos, labels, arcface_target(target, margin))
