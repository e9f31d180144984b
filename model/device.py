"""Device and dtype selection for inference: cuda -> mps -> cpu; bf16 autocast on CUDA, float32 elsewhere."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (validated), else the first available of cuda, mps, cpu."""
    import torch

    if device is not None:
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine")
        if resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r} requested but MPS is not available on this machine")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast: ``dtype`` if given, else bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return getattr(torch, name)  # type: ignore[no-any-return]


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast to ``dtype`` when it is not float32 (weights stay float32)."""
    import torch

    with torch.inference_mode():
        if dtype == torch.float32:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
