"""Data set loaders returning arrays; nothing here downloads."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_arrays"]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes), the embedded default.

    Returns:
        ``(images, labels)``: float32 images ``(N, 1, 8, 8)`` scaled to ``[0, 1]`` and int64 labels ``(N,)``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    return images, digits.target.astype(np.int64)
