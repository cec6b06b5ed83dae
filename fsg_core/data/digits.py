"""scikit-learn's bundled handwritten digits: 1,797 8x8 grey images of 0-9, read offline."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NUM_CLASSES", "load_digits_images"]

NUM_CLASSES = 10
_MAX_VALUE = 16.0  # the UCI digits count ink in 4x4 blocks of a 32x32 bitmap: values 0..16


def load_digits_images() -> tuple[Tensor, Tensor]:
    """Load the digits scaled to [0, 1].

    Returns:
        ``(images, labels)``: images float32 (1797, 1, 8, 8) in [0, 1], labels int64 (1797,) in [0, 10).
    """
    # Imported here: scikit-learn takes about a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / _MAX_VALUE  # (N, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (N,)
    return images, labels
