"""scikit-learn digits: the real 1,797 images, scaled to [0, 1], split and padded for small CNNs."""

from __future__ import annotations

import torch

from fsg_core.data import build_splits
from fsg_core.data.digits import NUM_CLASSES, load_digits_images
from fsg_core.spec import DataSpec


def test_load_digits_images() -> None:
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    # The source counts 0..16, so every scaled value is a multiple of 1/16.
    assert torch.equal(images * 16, (images * 16).round())
    assert sorted(labels.unique().tolist()) == list(range(NUM_CLASSES))


def test_digits_splits_cover_the_dataset() -> None:
    splits = build_splits(DataSpec(dataset="digits", val_fraction=0.1, test_fraction=0.2), seed=0)
    assert (splits.name, splits.num_classes, splits.input_shape) == ("digits", 10, (1, 8, 8))
    assert len(splits.test) == round(0.2 * 1797)
    assert len(splits.val) == round(0.1 * (1797 - len(splits.test)))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.mean) == len(splits.std) == 1


def test_digits_padded_to_the_models_input() -> None:
    splits = build_splits(DataSpec(dataset="digits", image_size=12), seed=0)
    assert splits.input_shape == (1, 12, 12)
    raw = splits.train.images * splits.std[0] + splits.mean[0]  # back to [0, 1]
    assert torch.allclose(raw[..., :2, :], torch.zeros(()), atol=1e-5)  # the black 2-pixel border
    assert torch.allclose(raw[..., 10:], torch.zeros(()), atol=1e-5)
