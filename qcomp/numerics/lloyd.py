"""Generators of MSE-optimal quantization grids for the standard normal distribution.

Used offline by `python -m qcomp.numerics.make_grids` (which stores the results in data/*.json);
nothing at runtime calls these, it loads the stored grids (see grids.py).

* p = 1, Lloyd-Max: the quantizer of n points minimizing E[(X - q(X))^2] for X ~ N(0, 1) is the unique
  fixed point of the two Lloyd conditions (thresholds at midpoints, points at the centroids of their
  cells). Every integral is exact (Gaussian pdf/cdf in float64): the centroid of [a, b] is
  (phi(a) - phi(b)) / (Phi(b) - Phi(a)). We start from the asymptotically optimal companded grid
  (point density ~ pdf^(1/3), i.e. quantiles of N(0, 3)), run Lloyd iterations, then Newton steps on the
  fixed-point equation c = centroid(c) with its exact tridiagonal Jacobian until the residual is < 1e-13.
* p = 2, vector grids for N(0, I_2): Lloyd's algorithm (k-means) on a *deterministic equal-mass
  quadrature* of N(0, I_2) rather than on a random sample. The plane is cut into m_r x m_theta cells of
  equal probability (rings of equal mass in u = 1 - exp(-r^2/2), which is uniform on [0, 1], times equal
  angle sectors); each cell is represented by its mass midpoint. Compared with Lloyd on a Gaussian
  sample of the same size this has no sampling noise (the quadrature error of a smooth integrand falls
  like 1/m^2 instead of 1/sqrt(N)), and it keeps the exact rotational symmetry of the distribution.
  Lloyd is a local method, so it is started from several initial grids and the best result is kept:
  a product of two scalar Lloyd-Max grids (n = n1 * n2; Lloyd never increases the MSE, so the result is
  never worse than the product grid, i.e. p = 2 is never worse than p = 1 at the same bits), and two
  "sunflower" spirals whose radial density follows the asymptotically optimal pdf^(1/2) (N(0, 2 I)).
  The reported MSE is re-evaluated on a finer, differently placed quadrature (a held-out check).
"""
from __future__ import annotations

import math

import torch

_F64 = torch.float64


def _phi(x: torch.Tensor) -> torch.Tensor:
    out = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return torch.where(torch.isinf(x), torch.zeros_like(x), out)


def _cell_moments(t: torch.Tensor):
    """For thresholds t (n+1 values, t[0] = -inf, t[-1] = +inf): mass B, first moment A, second moment M2 per cell."""
    cdf = torch.special.ndtr(t)
    sf = torch.special.ndtr(-t)
    # mass of [a, b]: use the upper tail where it is more accurate (cells right of 0)
    B = torch.where(t[:-1] >= 0, sf[:-1] - sf[1:], cdf[1:] - cdf[:-1])
    ph = _phi(t)
    A = ph[:-1] - ph[1:]
    tph = torch.where(torch.isinf(t), torch.zeros_like(t), t * ph)
    M2 = B + tph[:-1] - tph[1:]
    return B, A, M2


def _thresholds(c: torch.Tensor) -> torch.Tensor:
    inf = torch.tensor([math.inf], dtype=_F64)
    return torch.cat([-inf, 0.5 * (c[1:] + c[:-1]), inf])


def scalar_mse(points) -> float:
    """Exact E[(X - q(X))^2], X ~ N(0,1), for nearest-point quantization to the given scalar points."""
    c = torch.sort(torch.as_tensor(points, dtype=_F64).flatten()).values
    B, A, M2 = _cell_moments(_thresholds(c))
    return float((M2 - 2 * c * A + c * c * B).sum())


def _centroids(c: torch.Tensor):
    t = _thresholds(c)
    B, A, _ = _cell_moments(t)
    return A / B, t, B


def scalar_lloyd_max(n: int, tol: float = 1e-10, max_newton: int = 100) -> tuple[torch.Tensor, float]:
    """Lloyd-Max grid of n >= 2 points for N(0,1): (sorted float64 points [n], MSE).

    Converged when the fixed-point residual max|c - centroid(c)| is below `tol` and Newton no longer
    reduces it (float64 round-off of the tail-cell integrals sets a floor near 1e-11 for n = 256).
    """
    if n < 2:
        raise ValueError(f"a Lloyd-Max grid needs n >= 2 points, got {n}")
    u = (torch.arange(n, dtype=_F64) + 0.5) / n
    c = math.sqrt(3.0) * math.sqrt(2.0) * torch.special.erfinv(2 * u - 1)  # quantiles of N(0, 3)
    for _ in range(50):  # a few Lloyd iterations bring Newton into its basin
        c = _centroids(c)[0]
    best_res = math.inf
    for _ in range(max_newton):
        g, t, B = _centroids(c)
        F = c - g
        res = float(F.abs().max())
        if res < tol and res >= 0.5 * best_res:
            break
        best_res = min(best_res, res)
        # d g_i / d t_i = phi(t_i)(t_i - g_i)/B_i ; d g_i / d t_{i-1} = phi(t_{i-1})(g_i - t_{i-1})/B_i
        ph = _phi(t)
        hi = torch.where(torch.isinf(t[1:]), torch.zeros_like(g), ph[1:] * (t[1:] - g) / B)
        lo = torch.where(torch.isinf(t[:-1]), torch.zeros_like(g), ph[:-1] * (g - t[:-1]) / B)
        J = torch.eye(n, dtype=_F64)
        idx = torch.arange(n)
        # t_i = (c_i + c_{i+1}) / 2 for i = 1..n-1 (interior thresholds)
        J[idx, idx] -= 0.5 * (hi + lo)
        J[idx[:-1], idx[:-1] + 1] -= 0.5 * hi[:-1]
        J[idx[1:], idx[1:] - 1] -= 0.5 * lo[1:]
        step = torch.linalg.solve(J, F)
        c = torch.sort(c - step).values
    else:
        raise RuntimeError(f"Lloyd-Max for n = {n} did not converge (residual {res:.3g})")
    c = 0.5 * (c - c.flip(0))  # the optimum is symmetric; remove rounding asymmetry
    return c, scalar_mse(c)


# ---------------------------------------------------------------------------------------------------
# p = 2
# ---------------------------------------------------------------------------------------------------

def gaussian_quadrature_2d(m_r: int, m_theta: int, phase: float = 0.0) -> torch.Tensor:
    """m_r * m_theta equal-mass points representing N(0, I_2) (see module docstring), float64 [m, 2]."""
    # ring i covers u in [i/m_r, (i+1)/m_r]; its radius carries the ring's exact mean of r^2 = -2 ln(1-u)
    # (antiderivative of -ln(1-u) is (1-u)(ln(1-u) - 1)), so that E[|x|^2] = 2 holds exactly
    edges = 1.0 - torch.arange(m_r + 1, dtype=_F64) / m_r  # 1 - u at the ring edges, decreasing to 0
    F = torch.where(edges > 0, edges * (torch.log(edges.clamp_min(1e-300)) - 1.0), torch.zeros_like(edges))
    r = torch.sqrt(2.0 * (F[1:] - F[:-1]) * m_r)
    th = (torch.arange(m_theta, dtype=_F64) + 0.5 + phase) / m_theta * 2 * math.pi
    # rotate every ring by a golden-ratio offset so that cells do not line up radially
    shift = (torch.arange(m_r, dtype=_F64) * 0.6180339887498949 % 1.0) * 2 * math.pi / m_theta
    ang = th[None, :] + shift[:, None]
    return torch.stack([r[:, None] * torch.cos(ang), r[:, None] * torch.sin(ang)], -1).reshape(-1, 2)


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 1 << 17):
    """Index of the nearest center and squared distance, chunked over x."""
    cn = (c * c).sum(-1)
    idx = torch.empty(x.shape[0], dtype=torch.long)
    d2 = torch.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        d = cn[None, :] - 2 * xs @ c.T
        v, i = d.min(-1)
        idx[s : s + chunk] = i
        d2[s : s + chunk] = v + (xs * xs).sum(-1)
    return idx, d2.clamp_min(0)


def vector_mse(points: torch.Tensor, x: torch.Tensor) -> float:
    """MSE per dimension of nearest-point quantization of the equal-weight points x to `points`."""
    _, d2 = _assign(x, points.to(x.dtype))
    return float(d2.mean()) / x.shape[1]


def _lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, rtol: float = 1e-7) -> tuple[torch.Tensor, float]:
    n = c.shape[0]
    prev = math.inf
    for _ in range(iters):
        idx, d2 = _assign(x, c)
        mse = float(d2.mean()) / 2
        cnt = torch.bincount(idx, minlength=n).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        new = sums / cnt.clamp_min(1)[:, None]
        empty = cnt == 0
        if empty.any():  # move empty centers onto the worst-quantized points
            far = torch.topk(d2, int(empty.sum())).indices
            new[empty] = x[far]
        c = new
        if prev - mse < rtol * mse and not empty.any():
            break
        prev = mse
    return c, vector_mse(c, x)


def _product_init(n: int) -> torch.Tensor:
    n1 = 2 ** math.ceil(math.log2(n) / 2) if n & (n - 1) == 0 else max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    n2 = n // n1
    a = scalar_lloyd_max(n1)[0] if n1 > 1 else torch.zeros(1, dtype=_F64)
    b = scalar_lloyd_max(n2)[0] if n2 > 1 else torch.zeros(1, dtype=_F64)
    return torch.cartesian_prod(a, b)


def _sunflower_init(n: int, twist: float) -> torch.Tensor:
    i = torch.arange(n, dtype=_F64)
    r = math.sqrt(2.0) * torch.sqrt(-2.0 * torch.log1p(-(i + 0.5) / n))  # equal-mass radii of N(0, 2 I)
    ang = i * math.pi * (3 - math.sqrt(5)) + twist
    return torch.stack([r * torch.cos(ang), r * torch.sin(ang)], -1)


def vector_lloyd_2d(n: int, m_train: int = 512, m_eval: int = 1536, iters: int = 300) -> tuple[torch.Tensor, float]:
    """MSE-optimal (locally, best of several starts) grid of n >= 2 points for N(0, I_2): (points [n, 2], MSE per dim).

    Every start runs Lloyd on a coarse quadrature (m_train/2 squared points); the best is polished on the
    full m_train^2 quadrature and its MSE is measured on a held-out m_eval^2 quadrature.
    """
    if n < 2:
        raise ValueError(f"a vector grid needs n >= 2 points, got {n}")
    coarse = gaussian_quadrature_2d(m_train // 2, m_train // 2)
    best, best_mse = None, math.inf
    for init in (_product_init(n), _sunflower_init(n, 0.0), _sunflower_init(n, 1.0)):
        c, mse = _lloyd(coarse, init, iters)
        if mse < best_mse:
            best, best_mse = c, mse
    best, _ = _lloyd(gaussian_quadrature_2d(m_train, m_train), best, iters)
    held_out = gaussian_quadrature_2d(m_eval, m_eval, phase=0.5)
    best = best[torch.argsort(best[:, 1], stable=True)]
    best = best[torch.argsort(best[:, 0], stable=True)]  # deterministic order: by x, then y
    return best, vector_mse(best, held_out)
