"""Input sets (what the adversary may do) and output specs (what must hold).

Input sets are batched: ``x`` has shape (B, ...) and ``eps`` is a scalar or a (B,) tensor, so that
each input may have its own radius (e.g. during bisection on the certified radius). Balls are
intersected with the data domain (``[0, 1]`` pixels by default) *before* any normalisation, which
lives inside the model.

An output spec is a linear map of the network's output, ``C·f(x) + d``; the property holds when
every row is positive. ``Margins`` is the usual robustness spec: rows ``f_y − f_j`` for ``j ≠ y``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from certkit.errors import CertkitError

Domain = tuple[float, float] | None


class SpecError(CertkitError, ValueError):
    """Raised for malformed input sets or output specs."""


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    if not torch.is_floating_point(x):
        raise SpecError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise SpecError(f"{what} contains NaN or infinite values")


def _outward(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x − eps`` and ``x + eps`` rounded outwards in x's dtype (below float64, x ± eps rounded to nearest can
    cut off a sliver of the ball; the box must contain it, see docs/soundness.md)."""
    lo, hi = x - eps, x + eps
    if x.dtype in (torch.float64,) or not torch.is_floating_point(x):
        return lo, hi
    lo64, hi64 = x.double() - eps.double(), x.double() + eps.double()
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    lo = torch.where(lo.double() > lo64, torch.nextafter(lo, -inf), lo)
    hi = torch.where(hi.double() < hi64, torch.nextafter(hi, inf), hi)
    return lo, hi


def _as_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample radius shaped (B, 1, 1, ...) so that it broadcasts against x."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if not torch.isfinite(e).all():
        raise SpecError(f"epsilon must be finite, got {eps}")
    if (e < 0).any():
        raise SpecError(f"epsilon must be non-negative, got {eps}")
    if e.dim() == 0:
        e = e.expand(x.shape[0])
    if e.shape != (x.shape[0],):
        raise SpecError(f"epsilon must be a scalar or have shape ({x.shape[0]},), got {tuple(e.shape)}")
    return e.view(-1, *([1] * (x.dim() - 1)))


class InputSet:
    """A batched set of inputs. Every set exposes an enclosing box ``lower <= x' <= upper``."""

    x: torch.Tensor  # a representative (centre) point per sample, shape (B, ...)
    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def is_box(self) -> bool:
        """The set is its enclosing box (a box, an L∞ ball): what interval splitting and the MILP encode."""
        return True

    def concretize(self, A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The minimum over the set of ``A·x' + c`` per row (B, K), for ``A`` (B, K, ...) and ``c`` (B, K): over
        the enclosing box, exact for a box (centre·A − radius·|A|)."""
        lo, hi = self.lower.to(A.dtype), self.upper.to(A.dtype)
        Af = A.flatten(2)
        mid, rad = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
        return torch.einsum("bkn,bn->bk", Af, mid) - torch.einsum("bkn,bn->bk", Af.abs(), rad) + c

    def contains(self, points: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Which of ``points`` (same shape as x) lie in the set, up to ``tol`` (for tests)."""
        inside = (points >= self.lower - tol) & (points <= self.upper + tol)
        return inside.flatten(1).all(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n random points of the set per input, shape (n, B, ...), including box corners when possible."""
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> InputSet:
        raise NotImplementedError


@dataclass
class Box(InputSet):
    """Elementwise box ``lower <= x' <= upper``."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __post_init__(self) -> None:
        check_finite(self.lower, "box lower bound")
        check_finite(self.upper, "box upper bound")
        if self.lower.shape != self.upper.shape:
            raise SpecError(f"box bounds differ in shape: {tuple(self.lower.shape)} vs {tuple(self.upper.shape)}")
        if (self.lower > self.upper).any():
            raise SpecError("box lower bound exceeds upper bound")
        self.x = (self.lower + self.upper) / 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        where = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand((n, *self.lower.shape), generator=generator, dtype=self.lower.dtype, device=where)
        u = u.to(self.lower.device)
        corners = u[: n // 2].round()  # half of the samples are box corners
        u = torch.cat([corners, u[n // 2 :]])
        return self.lower + u * (self.upper - self.lower)

    def subset(self, idx) -> Box:
        """The sets of the inputs ``idx`` (an index tensor, a slice or a list), as one batch."""
        return Box(self.lower[idx], self.upper[idx])

    def to(self, device=None, dtype=None) -> Box:
        return Box(self.lower.to(device=device, dtype=dtype), self.upper.to(device=device, dtype=dtype))


class LpBall(InputSet):
    """``{x' : ||x' − x||_p <= eps} ∩ domain`` for p in {inf, 2, 1}."""

    p: float = math.inf

    def __init__(self, x: torch.Tensor, eps: float | torch.Tensor, domain: Domain = (0.0, 1.0),
                 validate: bool = True):
        if validate:  # validate=False skips the data-dependent checks (inside torch.func.vmap)
            check_finite(x)
        if x.dim() < 2:
            raise SpecError(f"input must be batched (B, ...), got shape {tuple(x.shape)}")
        if domain is not None:
            lo, hi = domain
            if lo >= hi:
                raise SpecError(f"empty domain {domain}")
            if validate and ((x < lo - 1e-6).any() or (x > hi + 1e-6).any()):
                raise SpecError(
                    f"input lies outside the data domain {domain}: inputs are expected in pixel space"
                    " (put input normalisation inside the model, e.g. certkit.nn.Normalize)"
                )
        self.x = x
        self.domain = domain
        self.eps = _as_eps(eps, x)  # (B, 1, ...)
        lower, upper = _outward(x, self.eps)
        if domain is not None:
            lower, upper = lower.clamp(min=domain[0]), upper.clamp(max=domain[1])
        self.lower, self.upper = lower, upper

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch={self.batch_size}, eps={self.eps.flatten().tolist()[:4]}...)"

    @property
    def is_box(self) -> bool:
        return self.p == math.inf

    def concretize(self, A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Also the dual-norm bound ``A·x − eps·‖A‖_q + c`` (1/p + 1/q = 1) for L2/L1 balls, and the better of
        the two (both hold on the ball clipped to the domain)."""
        box = super().concretize(A, c)
        if self.is_box:
            return box
        q = {2.0: 2.0, 1.0: math.inf}[self.p]
        Af = A.flatten(2)
        ball = torch.einsum("bkn,bn->bk", Af, self.x.to(A.dtype).flatten(1)) \
            - self.eps.flatten(1)[:, :1].to(A.dtype) * Af.norm(p=q, dim=2) + c
        return torch.maximum(box, ball)

    def contains(self, points: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        d = (points - self.x).flatten(1).norm(p=self.p, dim=1)
        return super().contains(points, tol) & (d <= self.eps.flatten() * (1 + tol) + tol)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Euclidean-style projection onto the set (exact for inf; ball then clip for p=2, as in PGD)."""
        delta = points - self.x
        if self.p == math.inf:
            delta = torch.maximum(torch.minimum(delta, self.eps), -self.eps)
        elif self.p == 2:
            norm = delta.flatten(1).norm(dim=1).view_as(self.eps).clamp_min(1e-12)
            delta = delta * torch.clamp(self.eps / norm, max=1.0)
        else:
            raise NotImplementedError(f"projection onto the L{self.p} ball")
        out = self.x + delta
        if self.domain is not None:
            out = out.clamp(*self.domain)
        return out

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points of the ball per centre (half on its corners / sphere); drawn where ``generator`` lives (the
        CPU without one, so the global CPU seed decides) and moved to the centre's device."""
        shape = (n, *self.x.shape)
        where = generator.device if generator is not None else torch.device("cpu")
        dt, dev = self.x.dtype, self.x.device
        if self.p == math.inf:
            u = torch.rand(shape, generator=generator, dtype=dt, device=where).to(dev)
            u[: n // 2] = u[: n // 2].round()  # corners of the ball
            pts = self.x + (2 * u - 1) * self.eps
        else:
            g = torch.randn(shape, generator=generator, dtype=dt, device=where)
            if self.p == 1:
                g = g.sign() * torch.empty_like(g).exponential_(generator=generator)
            g = g.to(dev)
            norm = g.flatten(2).norm(p=self.p, dim=2).view(n, -1, *([1] * (self.x.dim() - 1)))
            d = g.flatten(2).shape[-1]
            r = torch.rand((n, self.x.shape[0]), generator=generator, dtype=dt, device=where).to(dev)
            r = r ** (1.0 / d)
            r[: n // 2] = 1.0  # half on the sphere
            pts = self.x + g / norm.clamp_min(1e-12) * r.view_as(norm) * self.eps
        if self.domain is not None:
            # x is inside the domain, so clipping only shrinks |x' - x| per coordinate: still in the set
            pts = pts.clamp(*self.domain)
        return pts

    def subset(self, idx) -> LpBall:
        """The balls of the inputs ``idx`` (an index tensor, a slice or a list), as one batch."""
        return type(self)(self.x[idx], self.eps.flatten()[idx], self.domain)

    def to(self, device=None, dtype=None) -> LpBall:
        return type(self)(self.x.to(device=device, dtype=dtype), self.eps.flatten().to(device, dtype), self.domain)


class LinfBall(LpBall):
    p = math.inf


class L2Ball(LpBall):
    p = 2.0


class L1Ball(LpBall):
    p = 1.0


def ball(norm: str | float, x: torch.Tensor, eps: float | torch.Tensor, domain: Domain = (0.0, 1.0)) -> LpBall:
    """``ball('inf'|'2'|'1', x, eps)``."""
    key = str(norm).lower().lstrip("l")
    classes = {"inf": LinfBall, "2": L2Ball, "2.0": L2Ball, "1": L1Ball, "1.0": L1Ball}
    if key not in classes:
        raise SpecError(f"unknown norm {norm!r}; use 'inf', '2' or '1'")
    return classes[key](x, eps, domain)


# ----------------------------------------------------------------------------------------- output specs
@dataclass
class LinearSpec:
    """The property ``C·f(x) + d > 0`` (every row), batched: C is (B, K, n_out), d is (B, K) or None."""

    C: torch.Tensor
    d: torch.Tensor | None = None
    validate: bool = field(default=True, repr=False, compare=False)  # False skips the NaN check (inside vmap)

    def __post_init__(self) -> None:
        if self.C.dim() != 3:
            raise SpecError(f"C must have shape (batch, rows, outputs), got {tuple(self.C.shape)}")
        if self.d is not None and self.d.shape != self.C.shape[:2]:
            raise SpecError(f"d must have shape {tuple(self.C.shape[:2])}, got {tuple(self.d.shape)}")
        if self.validate:
            check_finite(self.C, "spec matrix C")
            if self.d is not None:
                check_finite(self.d, "spec offset d")

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """Evaluate ``C·out + d`` on concrete outputs (B, n_out) -> (B, K)."""
        v = torch.einsum("bkn,bn->bk", self.C.to(out.dtype), out)
        return v if self.d is None else v + self.d.to(out.dtype)

    def bound(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval bounds of ``C·out + d`` from bounds on the outputs."""
        C = self.C.to(lower.dtype)
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        c = torch.einsum("bkn,bn->bk", C, mid)
        r = torch.einsum("bkn,bn->bk", C.abs(), rad)
        if self.d is not None:
            c = c + self.d.to(c.dtype)
        return c - r, c + r


@dataclass
class Property:
    """For every point of the set, every clause has a positive row: ``min_q max_{k∈q} (C·f(x) + d)_k > 0``.

    ``spec`` holds the rows (B inputs, K rows); ``clauses`` (K,) gives each row's clause (default: each row its own
    clause, so every row must be positive — the classification margin). VNN-LIB's unsafe sets are disjunctions
    of conjunctions of linear constraints: a clause is one conjunction, negated. ``d`` is never None here."""

    spec: LinearSpec
    clauses: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B, K = self.spec.C.shape[:2]
        clauses = torch.arange(K) if self.clauses is None else torch.as_tensor(self.clauses)
        if clauses.shape != (K,) or clauses.dtype.is_floating_point or clauses.dtype == torch.bool:
            raise SpecError(f"clauses must give one integer clause index per spec row ({K}), got shape "
                            f"{tuple(clauses.shape)} and dtype {clauses.dtype}")
        self.clauses = torch.unique(clauses, return_inverse=True)[1].to(self.spec.C.device)  # indices 0..Q-1
        if self.spec.d is None:
            self.spec = LinearSpec(self.spec.C, torch.zeros(B, K, dtype=self.spec.C.dtype, device=self.spec.C.device))

    @property
    def C(self) -> torch.Tensor:
        return self.spec.C

    @property
    def d(self) -> torch.Tensor:
        return self.spec.d

    def value(self, rows: torch.Tensor) -> torch.Tensor:
        """``min_q max_{k∈q} rows_k`` for rows (B, K) -> (B,): ≤ 0 iff some clause has every row ≤ 0 (for the
        rows' values at a point: the point violates the property; for lower bounds: not proved)."""
        n = int(self.clauses.max()) + 1
        per = torch.full((rows.shape[0], n), -math.inf, dtype=rows.dtype, device=rows.device)
        per = per.scatter_reduce(1, self.clauses.to(rows.device).expand_as(rows), rows, reduce="amax")
        return per.min(1).values

    def proved(self, lower: torch.Tensor) -> torch.Tensor:
        """Every clause has a row whose lower bound is positive (B,) bool."""
        return self.value(lower) > 0

    def rows_of(self, q: int) -> torch.Tensor:
        """The indices of clause q's rows."""
        return (self.clauses == q).nonzero().squeeze(1)

    def subset(self, idx) -> Property:
        """The property of the inputs ``idx`` (indices or a mask; an int keeps a batch of one)."""
        idx = [idx] if isinstance(idx, int) else idx
        return Property(LinearSpec(self.C[idx], self.d[idx], validate=False), self.clauses)

    def clause(self, q: int) -> Property:
        """Clause q alone (its rows as one clause)."""
        rq = self.rows_of(q)
        one = torch.zeros(len(rq), dtype=torch.long)
        return Property(LinearSpec(self.C[:, rq], self.d[:, rq], validate=False), one)


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> LinearSpec:
    """Rows ``e_y − e_j`` for every ``j ≠ y``: shape (B, num_classes − 1, num_classes)."""
    if y.dim() != 1:
        raise SpecError(f"labels must have shape (B,), got {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise SpecError(f"labels must be an integer tensor (class indices), got dtype {y.dtype}")
    if ((y < 0) | (y >= num_classes)).any():
        raise SpecError(f"labels must lie in [0, {num_classes})")
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, n, n): row j = e_y − e_j
    others = torch.arange(num_classes, device=y.device).expand(len(y), -1)
    keep = others != y.unsqueeze(1)
    return LinearSpec(C[keep].view(len(y), num_classes - 1, num_classes), validate=False)  # ±1 and 0: finite


def worst_case_logits(margin_lower: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits ``z`` with ``z_y = 0`` and ``z_j = −(lower bound of f_y − f_j)``: cross-entropy on these upper-
    bounds the worst-case cross-entropy over the input set (Gowal et al. 2018; Wong & Kolter 2018)."""
    B = y.shape[0]
    z = torch.zeros(B, num_classes, dtype=margin_lower.dtype, device=margin_lower.device)
    others = torch.arange(num_classes, device=y.device).expand(B, -1)
    keep = others != y.unsqueeze(1)
    return z.masked_scatter(keep, -margin_lower)
