"""Synthetic data: shapes, balance, determinism, and that it is learnable."""

from __future__ import annotations

import pytest
import torch

from fsg_core.data import build_splits, iterate_batches
from fsg_core.data.synthetic import make_synthetic
from fsg_core.spec import DataSpec


def test_shapes_and_balanced_labels() -> None:
    images, labels = make_synthetic((2, 5, 7), samples=103, classes=10)
    assert images.shape == (103, 2, 5, 7) and images.dtype == torch.float32
    assert labels.shape == (103,) and labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=10)
    assert int(counts.min()) == 10 and int(counts.max()) == 11


def test_seeded() -> None:
    a = make_synthetic((3, 8, 8), 64, 4, seed=1)
    b = make_synthetic((3, 8, 8), 64, 4, seed=1)
    c = make_synthetic((3, 8, 8), 64, 4, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_rejects_degenerate_arguments() -> None:
    with pytest.raises(ValueError, match="classes >= 2"):
        make_synthetic((3, 8, 8), 64, 1)


def nearest_class_mean_accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    centroids = torch.stack([train_x[train_y == k].mean(0) for k in range(classes)])  # (K, D)
    predictions = torch.cdist(test_x, centroids).argmin(1)
    return float((predictions == test_y).float().mean())


def test_learnable_from_pixels_and_from_crop_invariant_colour() -> None:
    splits = build_splits(DataSpec(dataset="synthetic"), seed=0)  # 3x8x8, 10 classes, 512 samples
    train, test = splits.train, splits.test
    chance = 1 / splits.num_classes
    pixels = nearest_class_mean_accuracy(train.images.flatten(1), train.labels, test.images.flatten(1), test.labels, 10)
    assert pixels > 5 * chance
    # After the default augmentation the per-channel means still separate the classes.
    augmented = next(
        iterate_batches(
            train, len(train), shuffle=False, generator=torch.Generator().manual_seed(0), augment=DataSpec()
        )
    )[0]
    colour = nearest_class_mean_accuracy(
        augmented.mean((2, 3)), train.labels, test.images.mean((2, 3)), test.labels, 10
    )
    assert colour > 4 * chance


def test_small_cnn_beats_chance_quickly() -> None:
    torch.manual_seed(0)  # the model's initialization only; the data is seeded by build_splits
    splits = build_splits(DataSpec(dataset="synthetic", augment=False), seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, splits.num_classes),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        for images, labels in iterate_batches(splits.train, 128, shuffle=True, generator=generator):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(splits.test.images).argmax(1) == splits.test.labels).float().mean()
    assert accuracy > 3 / splits.num_classes
