"""Inception FID (Heusel et al. 2017, eq. 6): the Frechet distance between Gaussians fitted to the Inception-v3 pool
features (2048 wide) of a model's samples and of a dataset, the number of DDPM's Table 1 and DDIM's Table 1.

The library is torchmetrics' `FrechetInceptionDistance` (Lightning AI). It runs torch-fidelity's port of the
TensorFlow Inception graph (inception-2015-12-05) that the original FID code evaluated, TensorFlow 1's bilinear
resize to 299 x 299 included, so the features are those papers' features; it accumulates feature sums in float64;
and its sums are declared as states that torch.distributed adds up across processes, so generation split across
torchrun's processes needs no code of ours. torch-fidelity alone computes the same features but compares whole
datasets or generators in one call, with its own cache; torchmetrics' update/compute fits a sampling loop.

Offline nodes. The weights (a 91 MB file) are downloaded once into torch hub's cache when online; on a node without
internet pass `--fid-weights PATH` or set DDPM_LITE_FID_WEIGHTS (`inception_weights`). A dataset's statistics
(feature sum, sum of outer products, count) are computed once and cached in $DDPM_LITE_DATA/fid_stats/, keyed by
the dataset, the count and the weights file's SHA-256 (`reference_statistics`). FID is biased upwards at small n
(Binkowski et al. 2018): compare FIDs only at equal n, and report n with each.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ddpm_lite import distributed
from ddpm_lite.data import DownloadUnavailable, data_root, fetch, is_offline, short_reason

__all__ = ["FID_WEIGHTS_ENV", "WEIGHTS_NAME", "WEIGHTS_URL", "FIDWeightsNotFound", "fid_of_sampler", "frechet_inception",
           "inception_weights", "reference_statistics", "to_uint8"]

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name for the weights
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
FID_WEIGHTS_ENV = "DDPM_LITE_FID_WEIGHTS"


class FIDWeightsNotFound(FileNotFoundError):
    """The Inception weights are not on this machine and cannot be downloaded; the message says where to put them."""


def _hub_copy() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME  # where torchmetrics itself would download it


def _is_inception_state(path: Path) -> bool:
    """A file that torch loads as a state dict with the Inception network's layers (a truncated one does not)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and "Mixed_7c.branch_pool.conv.weight" in state and "fc.weight" in state


def inception_weights(path: str | os.PathLike | None = None, *, download: bool = True, timeout: float = 10.0) -> Path:
    """The Inception weights file to use: `path`; else $DDPM_LITE_FID_WEIGHTS; else torch hub's cached copy,
    downloaded there first when it is missing, `download` is true and DDPM_LITE_OFFLINE is not set (each network
    operation bounded by `timeout` seconds). Raises `FIDWeightsNotFound` saying where to put the file."""
    chosen = path if path is not None else os.environ.get(FID_WEIGHTS_ENV) or None
    if chosen is not None:
        chosen = Path(chosen).expanduser()
        if not chosen.is_file():
            where = "--fid-weights" if path is not None else FID_WEIGHTS_ENV
            raise FIDWeightsNotFound(f"{where} names {chosen}, which is not a file; it should be torch-fidelity's "
                                     f"{WEIGHTS_NAME} ({WEIGHTS_URL})")
        return chosen
    copy = _hub_copy()
    if copy.is_file():
        return copy
    why = "DDPM_LITE_OFFLINE is set" if is_offline() else "download=False"
    if download and not is_offline():
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            fetch([WEIGHTS_URL], WEIGHTS_NAME, None, copy.parent, timeout, intact=_is_inception_state, extract=False)
            return copy
        except (DownloadUnavailable, RuntimeError) as error:
            why = short_reason(error)
    raise FIDWeightsNotFound(
        f"the Inception weights for FID are not here ({why}). On a machine with internet, download {WEIGHTS_URL} "
        f"(91 MB) and copy it to {copy}, or anywhere and pass --fid-weights PATH (or set {FID_WEIGHTS_ENV}=PATH)")


def frechet_inception(weights: str | os.PathLike, device: torch.device | str = "cpu", *, sync: bool = True):
    """torchmetrics' FrechetInceptionDistance on 2048 pool features, with the weights file `weights`, on `device`.
    `sync=False` keeps a process's sums to itself (rank 0's FID during training); with a process group and
    `sync=True`, `compute()` adds every process's sums (all processes must call it)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), reset_real_features=False,
                                    sync_on_compute=sync).to(device)


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1], (N, 1 or 3, H, W), as the 8-bit RGB that FID's Inception reads: round((x + 1) 127.5),
    clipped to [0, 255] as when saving a PNG; grey images are repeated on three channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def reference_statistics(metric, images: Tensor, name: str, weights: str | os.PathLike, *, batch_size: int = 200,
                         cache: bool = True, root: str | os.PathLike | None = None) -> tuple[Path | None, bool]:
    """Put the Inception statistics of `images` ((N, C, H, W) in [-1, 1], e.g. CIFAR-10's training set) into
    `metric`'s real-image sums. `name` names the set in the cache file (with N and the weights' SHA-256), so
    statistics are computed once per dataset, size and weights: root/fid_stats/NAME-nN-SHA.pt. In a process
    group each process reads a slice, the sums are added up, rank 0 writes the cache, and only rank 0 keeps them
    (compute() adds the processes' sums). Returns (cache file or None, whether it was read rather than computed)."""
    path = None
    if cache:
        path = data_root(root) / "fid_stats" / f"{name}-n{len(images)}-{_sha256(Path(weights))[:16]}.pt"
    rank, world = distributed.rank(), distributed.world_size()
    if path is not None and path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        for state in REAL_STATES:
            value = stored[state] if rank == 0 else torch.zeros_like(stored[state])
            setattr(metric, state, value.to(getattr(metric, state).device))
        return path, True
    for start in range(rank * batch_size, len(images), world * batch_size):
        metric.update(to_uint8(images[start:start + batch_size]).to(metric.device), real=True)
    sums = [getattr(metric, state) for state in REAL_STATES]
    if world > 1:
        for value in sums:
            torch.distributed.all_reduce(value)
    if path is not None and rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({state: value.cpu() for state, value in zip(REAL_STATES, sums)}, tmp)
        tmp.replace(path)  # another process never reads half a file
    if rank > 0:
        for state, value in zip(REAL_STATES, sums):
            setattr(metric, state, torch.zeros_like(value))
    return path, False


def fid_of_sampler(metric, sample: Callable[[int, torch.Generator], Tensor], n: int, *, batch_size: int = 500,
                   seed: int = 0, progress: bool = True, shared: bool = True) -> float:
    """FID of n samples against the reference statistics already in `metric`. `sample(count, generator)` returns
    `count` images in [-1, 1]. Batch k (rows k * batch_size, ...) is drawn with a generator seeded seed + its first
    row, by process k mod world size, so the n samples are the same for any number of processes; every process
    must call this. `shared=False`: this process draws all n alone (rank 0's FID during training)."""
    from tqdm.auto import tqdm

    rank, world = (distributed.rank(), distributed.world_size()) if shared else (0, 1)
    starts = range(0, n, batch_size)[rank::world]
    for start in tqdm(starts, desc=f"FID samples (process {rank})", disable=not progress or rank > 0):
        count = min(batch_size, n - start)
        images = sample(count, torch.Generator().manual_seed(seed + start))
        metric.update(to_uint8(images).to(metric.device), real=False)
    return float(metric.compute())
