"""Digits: a small MNIST classifier and the offline quality of generated digits it gives.

`DigitClassifier` is a small CNN trained on MNIST by scripts/train_classifier.py; its weights ship in
ddpm_lite/assets/ (results/digit_classifier.md records how it was trained and how well it classifies).
`digit_metrics(images, reference)` reads generated digits with it: the Frechet distance to real digits in its feature
space (`ddpm_lite.metrics.frechet_distance`), the share of confidently classified digits and the classes covered;
`conditional_metrics` adds, for class-conditional samples, the accuracy of the requested class and the diversity.

This Frechet distance is computed in a small MNIST classifier's feature space. It is NOT Inception-FID and is not
comparable with published FID numbers: use it only to compare models within this course (lower is better). Real
held-out digits against the training digits give its floor (results/digit_classifier.md).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor, nn

from ddpm_lite.checks import check_positive_int, check_samples
from ddpm_lite.metrics import frechet_distance, frechet_distance_se

CONFIDENCE_THRESHOLD = 0.9  # a prediction is "confident" when its max softmax probability is at least this
PIXEL_TOLERANCE = 1e-6  # float round-off allowed beyond [-1, 1] (e.g. x / 127.5 - 1 in float32)


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
    works from a source checkout and from a pip install alike. results/digit_classifier.md records how they were made.
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
    confident share and classes covered of real digits in results/digit_classifier.md).
    """

    frechet_distance: float  # generated vs reference images, in the classifier's feature space; lower is better
    confident_share: float  # share of generated images whose max softmax probability >= CONFIDENCE_THRESHOLD
    class_histogram: tuple[int, ...]  # (10,) counts of the predicted class (argmax) over all generated images
    classes_covered: int  # classes in 0..9 predicted confidently (max prob >= CONFIDENCE_THRESHOLD) at least once
    n: int  # number of generated images
    n_reference: int  # number of reference images
    frechet_se: float | None = None  # bootstrap standard error of frechet_distance (digit_metrics(resamples=...))

    def table(self) -> str:
        """A short human-readable summary, one quantity per line."""
        histogram = " ".join(f"{count}" for count in self.class_histogram)
        return "\n".join([
            f"generated digits            {self.n:,} (reference: {self.n_reference:,} real digits)",
            f"Frechet distance            {self.frechet_distance:.4g}"
            + ("" if self.frechet_se is None else f" +- {self.frechet_se:.2g} (bootstrap SE)")
            + "  (MNIST-classifier features; not FID)",
            f"confident (max p >= {CONFIDENCE_THRESHOLD:g})    {100 * self.confident_share:.1f}%",
            f"classes covered (confident) {self.classes_covered}/10",
            f"predicted class counts 0-9  {histogram}",
        ])

    def __str__(self) -> str:
        return self.table()


def _check_images(name: str, images: Tensor) -> None:
    check_samples(name, images, "a (N, 1, 28, 28) tensor with N >= 2",
                  lambda x: x.dim() == 4 and tuple(x.shape[1:]) == (1, 28, 28) and x.shape[0] >= 2, values="pixels")
    low, high = images.min().item(), images.max().item()
    if low < -1 - PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
        hint = "pixels in 0..255? use x / 127.5 - 1" if high > 2 else "samples? clamp them with .clamp(-1, 1)"
        raise ValueError(f"{name} must lie in [-1, 1] (the range of load_mnist), got values in [{low:.3g}, {high:.3g}] "
                         f"({hint})")


def _read(classifier: DigitClassifier | None, images: Tensor, reference: Tensor,
          batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Features and softmax probabilities of the generated images, and features of the reference digits."""
    _check_images("images", images)
    _check_images("reference", reference)
    check_positive_int("batch_size", batch_size)
    classifier = load_digit_classifier() if classifier is None else classifier
    features, probabilities = _features_and_probabilities(classifier, images, batch_size)
    return features, probabilities, _reference_features(classifier, reference, batch_size)


# The reference digits' features from the last call, reused while the same classifier object, with unchanged weights,
# reads the same reference tensor, unchanged: notebooks and scripts score many sets of samples against one reference
# set (4,500 training digits), and reading it costs more than reading the samples. Identity is checked through weak
# references and changes through PyTorch's in-place version counters (Tensor._version), so an in-place edit of the
# reference or of the weights recomputes. One entry, so it holds one (M, F) float64 tensor at most.
_last_reference: tuple[weakref.ref, weakref.ref, tuple, Tensor] | None = None


def _reference_features(classifier: DigitClassifier, reference: Tensor, batch_size: int) -> Tensor:
    global _last_reference
    try:
        versions = (reference._version, tuple(p._version for p in classifier.parameters()))
    except RuntimeError:  # inference tensors have no version counter: do not cache them
        return _features_and_probabilities(classifier, reference, batch_size)[0]
    if _last_reference is not None:
        classifier_ref, reference_ref, cached_versions, features = _last_reference
        if classifier_ref() is classifier and reference_ref() is reference and cached_versions == versions:
            return features
    features = _features_and_probabilities(classifier, reference, batch_size)[0]
    _last_reference = (weakref.ref(classifier), weakref.ref(reference), versions, features)
    return features


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
    images: Tensor, reference: Tensor, classifier: DigitClassifier | None = None, *, batch_size: int = 500,
    resamples: int = 0,
) -> DigitMetrics:
    """Frechet distance to real digits, confident share and class coverage of generated digits.

    images: (N, 1, 28, 28) generated digits in [-1, 1] (clamp raw samples first, as when displaying them);
    reference: (M, 1, 28, 28) real digits, e.g. `load_mnist(train=True)[0].tensors[0]`; N, M >= 2.
    classifier: default `load_digit_classifier()`. Runs in batches of `batch_size` on the classifier's device.
    resamples: when >= 2, also the Frechet distance's bootstrap standard error over that many resamplings of the
    generated images (`metrics.frechet_distance_se`, seed 0); 0 (the default) leaves `frechet_se` None.
    Not Inception-FID: see `DigitMetrics`.
    """
    if resamples != 0:
        check_positive_int("resamples", resamples, minimum=2)
    features, probabilities, reference_features = _read(classifier, images, reference, batch_size)
    confidence, predicted = probabilities.max(dim=1)
    confident = confidence >= CONFIDENCE_THRESHOLD
    return DigitMetrics(
        frechet_distance=frechet_distance(features, reference_features),
        frechet_se=frechet_distance_se(features, reference_features, resamples=resamples) if resamples else None,
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
    features, probabilities, reference_features = _read(classifier, images, reference, batch_size)
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
