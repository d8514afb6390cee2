"""Argument validators shared by the library: each raises a ValueError that names the argument, the value and what
was expected (STYLE.md rule 8), so every module reports the same mistake in the same words."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    """`value` must be an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_finite_number(name: str, value: object, minimum: float = -math.inf) -> None:
    """`value` must be a finite int or float (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= minimum):
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


def check_samples(name: str, value: object, expected: str, valid: Callable[[Tensor], bool],
                  values: str = "entries") -> None:
    """`value` must be a tensor for which `valid(value)` holds (its shape, described by `expected`, e.g. "a (N, D)
    tensor with N >= 1"), with only finite `values`."""
    if not isinstance(value, Tensor) or not valid(value):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be {expected}, got {shape}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite {values}")
