"""Checks of a command line's request shared by ``sparse-lrp demo`` and ``bench``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UsageError", "check_device", "check_out"]


class UsageError(Exception):
    """A problem with the user's request: printed as one readable line, exit code 2."""


def check_out(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to output folder {str(path)!r}: {err.strerror or err}") from None


def check_device(text: str):
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"invalid --device {text!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text!r}: CUDA is not available in this torch build / on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError(f"--device {text!r}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"--device {text!r}: unsupported device type {device.type!r} (use cpu, cuda or mps)")
    return device
