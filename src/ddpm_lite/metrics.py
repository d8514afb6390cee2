"""Sample-quality metrics: sliced Wasserstein distance for 2-D toys, a Frechet distance and confidence for digits.

- `sliced_wasserstein(x, y)` compares two point clouds (N, D), (M, D): the average over random unit directions of the
  1-D Wasserstein distance between their projections (Rabin et al. 2011; Bonneel et al. 2015). Two finite samples
  of the *same* distribution are never at distance 0, so `sliced_wasserstein_floor` measures that data-vs-data floor
  at a given sample size: a model cannot be judged closer to the data than this.
- `frechet_distance(features_a, features_b)` is the Frechet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets (Dowson and Landau 1982), the formula behind FID (Heusel et al. 2017).
- `digit_metrics(images, reference)` applies it to MNIST digits in the feature space of `DigitClassifier`, a small
  CNN trained on MNIST by scripts/train_classifier.py whose weights ship in ddpm_lite/assets/.

This Frechet distance is computed in a small MNIST classifier's feature space. It is NOT Inception-FID and is not
comparable with published FID numbers: use it only to compare models within this course (lower is better). Real
held-out digits against the training digits give its floor; assets/README.md records that value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from statistics import mean, stdev

import torch
from torch import Tensor, nn

CONFIDENCE_THRESHOLD = 0.9  # a prediction is "confident" when its max softmax probability is at least this
_PROJECTION_CHUNK_ELEMENTS = 1 << 23  # at most this many projected values (64 MiB in float64) per cloud at once


# ---------------------------------------------------------------------------------------------------- sliced W_p
def _check_cloud(name: str, cloud: Tensor) -> None:
    if not isinstance(cloud, Tensor) or cloud.dim() != 2 or cloud.shape[0] < 1 or cloud.shape[1] < 1:
        shape = tuple(cloud.shape) if isinstance(cloud, Tensor) else type(cloud).__name__
        raise ValueError(f"{name} must be a (N, D) tensor with N >= 1 and D >= 1, got {shape}")
    if not torch.isfinite(cloud).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")


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
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an int >= 2 (a standard deviation needs two trials), got {repeats!r}")
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
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] < 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"{name} must be a (N, F) tensor with N >= 2 samples, got {shape}")
        if not torch.isfinite(features).all():
            raise ValueError(f"{name} must be finite, got NaN or infinite entries")
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


# ---------------------------------------------------------------------------------------------------- digits
class DigitClassifier(nn.Module):
    """A small CNN for MNIST: three conv blocks, global average pooling, a feature layer and a linear head.

    Input x: (B, 1, 28, 28) in [-1, 1] (the range of `data.load_mnist`). `forward(x)` -> logits (B, 10);
    `features(x)` -> (B, n_features), the penultimate layer (after its ReLU) used by `digit_metrics`.
    About 102k parameters (0.4 MB in float32); the shipped weights use the defaults.
    """

    def __init__(self, width: int = 32, n_features: int = 64) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, width), nn.MaxPool2d(2),  # (B, width, 14, 14)
            *block(width, 2 * width), nn.MaxPool2d(2),  # (B, 2 width, 7, 7)
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4 width)
        )
        self.feature_layer = nn.Sequential(nn.Linear(4 * width, n_features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(n_features, 10))

    def features(self, x: Tensor) -> Tensor:
        """x: (B, 1, 28, 28) in [-1, 1] -> (B, n_features), non-negative."""
        return self.feature_layer(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, 28, 28) in [-1, 1] -> logits (B, 10)."""
        return self.head(self.features(x))


def load_digit_classifier(device: torch.device | str | None = None) -> DigitClassifier:
    """The `DigitClassifier` trained by scripts/train_classifier.py, in eval mode, on `device` (default: CPU).

    Its weights are package data (ddpm_lite/assets/digit_classifier.pt), read through importlib.resources so this
    works from a source checkout and from a pip install alike. assets/README.md records how they were made.
    """
    classifier = DigitClassifier()
    with resources.as_file(resources.files("ddpm_lite") / "assets" / "digit_classifier.pt") as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    classifier.load_state_dict({name: value.float() for name, value in state.items()})
    return classifier.to(device or "cpu").eval()


@dataclass(frozen=True)
class DigitMetrics:
    """Quality of generated digits as seen by a small MNIST classifier (`digit_metrics` computes it).

    The Frechet distance is computed in a small MNIST classifier's 64-dimensional feature space. It is NOT
    Inception-FID and is not comparable with published FID numbers: use it only to compare models within this
    course (lower is better; held-out real digits against the training digits give the floor, recorded with the
    confident share and classes covered of real digits in ddpm_lite/assets/README.md).
    """

    frechet_distance: float  # generated vs reference images, in the classifier's feature space; lower is better
    confident_share: float  # share of generated images whose max softmax probability >= CONFIDENCE_THRESHOLD
    class_histogram: tuple[int, ...]  # (10,) counts of the predicted class (argmax) over all generated images
    classes_covered: int  # classes in 0..9 predicted confidently (max prob >= CONFIDENCE_THRESHOLD) at least once
    n: int  # number of generated images
    n_reference: int  # number of reference images

    def table(self) -> str:
        """A short human-readable summary, one quantity per line."""
        histogram = " ".join(f"{count}" for count in self.class_histogram)
        return "\n".join([
            f"generated digits            {self.n:,} (reference: {self.n_reference:,} real digits)",
            f"Frechet distance            {self.frechet_distance:.4g}  (MNIST-classifier features; not FID)",
            f"confident (max p >= {CONFIDENCE_THRESHOLD:g})    {self.confident_share:.1%}",
            f"classes covered (confident) {self.classes_covered}/10",
            f"predicted class counts 0-9  {histogram}",
        ])

    def __str__(self) -> str:
        return self.table()


def _check_images(name: str, images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) \
            or images.shape[0] < 2:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, 1, 28, 28) tensor with N >= 2, got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite pixels")


def _features_and_probabilities(classifier: DigitClassifier, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """images: (N, 1, 28, 28), clamped to [-1, 1] -> features (N, F) float64 and softmax probabilities (N, 10)."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    features, probabilities = [], []
    try:
        with torch.inference_mode():
            for batch in images.split(batch_size):
                h = classifier.features(batch.to(device=device, dtype=torch.float32).clamp(-1, 1))
                features.append(h.double().cpu())
                probabilities.append(classifier.head(h).softmax(dim=1).double().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(features), torch.cat(probabilities)


def digit_metrics(
    images: Tensor, reference: Tensor, classifier: DigitClassifier | None = None, *, batch_size: int = 500
) -> DigitMetrics:
    """Frechet distance to real digits, confident share and class coverage of generated digits.

    images: (N, 1, 28, 28) generated digits in [-1, 1] (values outside are clamped, as when displaying samples);
    reference: (M, 1, 28, 28) real digits, e.g. `load_mnist(train=True)[0].tensors[0]`; N, M >= 2.
    classifier: default `load_digit_classifier()`. Runs in batches of `batch_size` on the classifier's device.
    Not Inception-FID: see `DigitMetrics`.
    """
    _check_images("images", images)
    _check_images("reference", reference)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    classifier = load_digit_classifier() if classifier is None else classifier
    features, probabilities = _features_and_probabilities(classifier, images, batch_size)
    reference_features, _ = _features_and_probabilities(classifier, reference, batch_size)
    confidence, predicted = probabilities.max(dim=1)
    confident = confidence >= CONFIDENCE_THRESHOLD
    return DigitMetrics(
        frechet_distance=frechet_distance(features, reference_features),
        confident_share=float(confident.double().mean()),
        class_histogram=tuple(int(c) for c in torch.bincount(predicted, minlength=10)),
        classes_covered=int(predicted[confident].unique().numel()),
        n=images.shape[0],
        n_reference=reference.shape[0],
    )


@dataclass(frozen=True)
class ConditionalMetrics:
    """How well class-conditional digits match the requested class, and how varied they are (`conditional_metrics`)."""

    accuracy: float  # share of images the classifier assigns (argmax) to the requested class
    confident_share: float  # share with max softmax probability >= CONFIDENCE_THRESHOLD
    diversity: float  # mean within-class pairwise feature distance, relative to real digits of the same classes (1 = as varied)
    frechet_distance: float  # all images vs the reference digits, in the classifier's features (not Inception-FID)
    n: int  # number of generated images


def conditional_metrics(images: Tensor, labels: Tensor, reference: Tensor, reference_labels: Tensor,
                        classifier: DigitClassifier | None = None, *, batch_size: int = 500) -> ConditionalMetrics:
    """images: (N, 1, 28, 28) generated for `labels` (N,) int64; reference: (M, 1, 28, 28) real digits with
    `reference_labels` (M,). Each class present in `labels` needs >= 2 images and >= 2 reference digits."""
    _check_images("images", images)
    _check_images("reference", reference)
    if labels.shape != images.shape[:1] or reference_labels.shape != reference.shape[:1]:
        raise ValueError(f"labels must be (N,) and reference_labels (M,), got {tuple(labels.shape)} for "
                         f"{images.shape[0]} images and {tuple(reference_labels.shape)} for {reference.shape[0]}")
    classifier = load_digit_classifier() if classifier is None else classifier
    features, probabilities = _features_and_probabilities(classifier, images, batch_size)
    reference_features, _ = _features_and_probabilities(classifier, reference, batch_size)
    confidence, predicted = probabilities.max(dim=1)

    def spread(f: Tensor) -> float:  # mean distance between distinct pairs
        if len(f) < 2:
            raise ValueError("every requested class needs at least 2 images and 2 reference digits")
        return float(torch.pdist(f).mean())

    classes = labels.unique()
    generated = sum(spread(features[labels == c]) for c in classes)
    real = sum(spread(reference_features[reference_labels == c]) for c in classes)
    return ConditionalMetrics(
        accuracy=float((predicted == labels.cpu()).double().mean()),
        confident_share=float((confidence >= CONFIDENCE_THRESHOLD).double().mean()),
        diversity=generated / real,
        frechet_distance=frechet_distance(features, reference_features),
        n=images.shape[0],
    )
