"""Distances between two sets of samples: the sliced Wasserstein distance for point clouds, the Frechet distance for
feature sets. The digit classifier and the digit metrics built on them are `ddpm_lite.digits`.

- `sliced_wasserstein(x, y)` compares two point clouds (N, D), (M, D): the average over random unit directions of the
  1-D Wasserstein distance between their projections (Rabin et al. 2011; Bonneel et al. 2015). Two finite samples
  of the *same* distribution are never at distance 0, so `sliced_wasserstein_floor` measures that data-vs-data floor
  at a given sample size: a model cannot be judged closer to the data than this.
- `frechet_distance(features_a, features_b)` is the Frechet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets (Dowson and Landau 1982), the formula behind FID (Heusel et al. 2017).
- `nearest_neighbours(x, reference)`: each sample's distance to its nearest reference point (a memorisation check),
  computed in chunks so memory does not grow with the number of samples.
- `ddpm_lite.digits.digit_metrics(images, reference)` applies it to MNIST digits in the feature space of a small
  classifier: that is NOT Inception-FID (see `ddpm_lite.digits`).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import mean, stdev

import torch
from torch import Tensor

from ddpm_lite.checks import check_finite_number, check_positive_int, check_samples

_PROJECTION_CHUNK_ELEMENTS = 1 << 23  # at most this many projected values (64 MiB in float64) per cloud at once


# ---------------------------------------------------------------------------------------------------- sliced W_p
def _check_cloud(name: str, cloud: Tensor) -> None:
    check_samples(name, cloud, "a (N, D) tensor with N >= 1 and D >= 1",
                  lambda c: c.dim() == 2 and c.shape[0] >= 1 and c.shape[1] >= 1)


def _wasserstein_1d_pow(x: Tensor, y: Tensor, p: float) -> Tensor:
    """W_p^p between the empirical distributions of the rows: x (L, N), y (L, M) -> (L,).

    W_p^p = int_0^1 |F_x^{-1}(u) - F_y^{-1}(u)|^p du with both quantile functions step functions; it is integrated
    exactly on the merged breakpoints {i/N} u {j/M}. For N == M this is mean |x_(i) - y_(i)|^p over sorted samples.
    Rows, not columns: sorting contiguous rows is several times faster.
    """
    x, y = x.sort(dim=1).values, y.sort(dim=1).values
    n, m = x.shape[1], y.shape[1]
    if n == m:
        return (x - y).abs().pow(p).mean(dim=1)
    dtype, device = x.dtype, x.device
    u = torch.cat([torch.arange(1, n + 1, dtype=dtype, device=device) / n,
                   torch.arange(1, m + 1, dtype=dtype, device=device) / m]).unique()  # sorted breakpoints, ends at 1
    width = torch.diff(u, prepend=u.new_zeros(1))  # (K,) lengths of the intervals (u_{k-1}, u_k]
    middle = u - width / 2  # a point inside each interval, away from the breakpoints' rounding
    i = (middle * n).floor().long().clamp_(max=n - 1)  # F_x^{-1}(u) = x_(i) for u in (i/N, (i+1)/N], 0-based i
    j = (middle * m).floor().long().clamp_(max=m - 1)
    return ((x[:, i] - y[:, j]).abs().pow(p) * width).sum(dim=1)


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, n_projections: int = 256, p: float = 2, generator: torch.Generator | None = None
) -> float:
    """Sliced p-Wasserstein distance SW_p = (E_theta W_p^p(<x, theta>, <y, theta>))^(1/p) between two point clouds.

    x: (N, D); y: (M, D); N and M may differ (the 1-D distances are exact between the empirical distributions,
    see `_wasserstein_1d_pow`). theta: `n_projections` directions uniform on the unit sphere, drawn on the CPU from
    `generator` (default: torch's global generator). Computed in float64. For D = 1 it is the exact W_p.
    """
    _check_cloud("x", x)
    _check_cloud("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y must have as many columns as x ({x.shape[1]}), got y of shape {tuple(y.shape)}")
    check_positive_int("n_projections", n_projections)
    check_finite_number("p", p, minimum=1)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).T.to(x.device)  # (L, D) unit rows
    x, y = x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)
    chunk = max(1, _PROJECTION_CHUNK_ELEMENTS // max(x.shape[0], y.shape[0]))
    total = sum(_wasserstein_1d_pow(t @ x.T, t @ y.T, p).sum() for t in theta.split(chunk))  # (chunk, N) at once
    return float((total / n_projections) ** (1 / p))


def sliced_wasserstein_floor(
    sample_data: Callable[[int, torch.Generator], Tensor],
    n: int,
    *,
    repeats: int = 5,
    generator: torch.Generator | None = None,
    **kw: float,
) -> tuple[float, float]:
    """Mean and sample standard deviation, over `repeats` trials, of SW_p between two independent data samples.

    sample_data(n, generator) -> (n, D) draws n data points; `kw` goes to `sliced_wasserstein` (n_projections, p).
    This is the data-vs-data floor at sample size n: when a model's n samples lie within a couple of standard
    deviations of this mean from n data points, this metric at this n cannot tell the model from the data.
    Default `generator`: a new one seeded from torch's global generator (so torch.manual_seed fixes the result).
    """
    check_positive_int("n", n)
    check_positive_int("repeats", repeats, minimum=2)  # a standard deviation needs two trials
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
    distances = [sliced_wasserstein(sample_data(n, generator), sample_data(n, generator), generator=generator, **kw)
                 for _ in range(repeats)]
    return mean(distances), stdev(distances)


# ---------------------------------------------------------------------------------------------------- Frechet
def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets.

    features_a: (N, F); features_b: (M, F); N, M >= 2. Means and unbiased covariances in float64. The trace of
    (S_a S_b)^(1/2) is computed as the sum of sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), a symmetric PSD matrix with the
    same eigenvalues, so only `eigh` is needed; round-off negative eigenvalues are clamped to 0.
    """
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        check_samples(name, features, "a (N, F) tensor with N >= 2 samples", lambda f: f.dim() == 2 and f.shape[0] >= 2)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_b must have width {features_a.shape[1]} like features_a, "
                         f"got {tuple(features_b.shape)}")
    a = features_a.detach().to(torch.float64)
    b = features_b.detach().to(device=a.device, dtype=torch.float64)
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)  # (F, F) even for F = 1
    eigenvalues, eigenvectors = torch.linalg.eigh(s_a)
    sqrt_s_a = (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T  # S_a^(1/2), symmetric PSD
    middle = sqrt_s_a @ s_b @ sqrt_s_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))  # >= 0 in exact arithmetic; clamp round-off when both sets are equal


def frechet_distance_se(features_a: Tensor, features_b: Tensor, *, resamples: int = 100,
                        generator: torch.Generator | None = None) -> float:
    """Bootstrap standard error of `frechet_distance(features_a, features_b)` for a fresh draw of set a.

    The standard deviation of the distance over `resamples` resamplings of features_a's N rows with replacement
    (Efron and Tibshirani 1993, Algorithm 6.1), features_b held fixed: the sampling noise of the generated set, the
    larger term when the reference set is the bigger one. `generator` picks the resampled rows (default: seed 0).
    """
    check_samples("features_a", features_a, "a (N, F) tensor with N >= 2 samples",
                  lambda f: f.dim() == 2 and f.shape[0] >= 2)
    check_positive_int("resamples", resamples, minimum=2)  # a standard deviation needs two resamples
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    n = features_a.shape[0]
    distances = [frechet_distance(features_a[torch.randint(n, (n,), generator=generator).to(features_a.device)],
                                  features_b) for _ in range(resamples)]
    return stdev(distances)

# ---------------------------------------------------------------------------------------------------- nearest
def nearest_neighbours(x: Tensor, reference: Tensor, *, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Euclidean distance from each row of x to its nearest row of reference, and that row's index.

    x: (N, ...) and reference: (M, ...), flattened to (N, F) and (M, F) with the same F (images (N, 1, 28, 28) are
    fine). Returns (distance (N,) float64, index (N,) int64). Distances are computed for `chunk` rows of x at a time
    in float64, so memory is chunk x M distances whatever N is (10,000 test digits against MNIST's 60,000 training
    digits in one call would take 4.8 GB).
    """
    check_positive_int("chunk", chunk)
    check_samples("x", x, "a tensor (N, ...) with N >= 1", lambda v: v.dim() >= 1 and v.shape[0] >= 1)
    check_samples("reference", reference, "a tensor (M, ...) with M >= 1", lambda v: v.dim() >= 1 and v.shape[0] >= 1)
    flat_x, flat_reference = x.reshape(len(x), -1), reference.reshape(len(reference), -1).to(torch.float64)
    if flat_x.shape[1] != flat_reference.shape[1]:
        raise ValueError(f"x and reference must have the same number of values per row, got {tuple(x.shape)} and "
                         f"{tuple(reference.shape)}")
    distances, indices = [], []
    for rows in flat_x.split(chunk):
        nearest = torch.cdist(rows.to(device=flat_reference.device, dtype=torch.float64), flat_reference).min(dim=1)
        distances.append(nearest.values)
        indices.append(nearest.indices)
    return torch.cat(distances), torch.cat(indices)
