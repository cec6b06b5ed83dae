"""Datasets as in-memory tensors: ``build_splits(spec, seed)`` for train/val/test, ``iterate_batches`` to batch them.

Everything random takes a ``torch.Generator`` built from the run's seed, never the global RNG, so a
split is a pure function of ``(spec, seed)`` and a batch stream a pure function of the generator state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fsg_core.data.cifar import load_cifar
from fsg_core.data.digits import NUM_CLASSES as DIGITS_CLASSES
from fsg_core.data.digits import load_digits_images
from fsg_core.data.errors import DatasetError
from fsg_core.data.synthetic import make_synthetic
from fsg_core.data.transforms import apply_crop_flip, channel_stats, draw_crop_flip, fit_size, normalize
from fsg_core.spec import DataSpec

__all__ = [
    "DatasetError",
    "SplitIndices",
    "Splits",
    "TensorSplit",
    "build_splits",
    "iterate_batches",
    "num_batches",
    "should_pin_memory",
    "split_indices",
]

# Digits and synthetic data have no official test set. Their hold-out uses this fixed seed rather than
# the run's, so that, as with CIFAR, every run of a dataset is scored on the same test images.
_TEST_SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)
class TensorSplit:
    """One split held in memory."""

    images: Tensor  # float32 (N, C, H, W), normalized
    labels: Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1 or self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"a split needs images (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> TensorSplit:
        """This split on ``device`` (batches then come straight from device memory)."""
        return TensorSplit(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class Splits:
    """Train, validation and test splits of one dataset, with what a deployed model needs to know."""

    train: TensorSplit
    val: TensorSplit  # may be empty (val_fraction=0), with the right (0, C, H, W) shape
    test: TensorSplit
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of the raw train pixels; inputs were (x - mean) / std
    std: tuple[float, ...]
    name: str  # DataSpec.dataset


@dataclass(frozen=True, eq=False)
class SplitIndices:
    """Which samples of the loaded training source each split holds (sorted positions in it); ``test``
    is None where the dataset has a test set of its own (CIFAR)."""

    train: Tensor
    val: Tensor
    test: Tensor | None


def _split_indices(labels: Tensor, spec: DataSpec, seed: int, *, hold_test: bool) -> SplitIndices:
    test_idx = None
    pool = torch.arange(len(labels))
    if hold_test:
        n_test = _held_count(len(labels), spec.test_fraction)
        rest, held = _stratified_split(labels, n_test, torch.Generator().manual_seed(_TEST_SPLIT_SEED))
        pool, test_idx = rest, held
    generator = torch.Generator().manual_seed(seed)
    train, val = _stratified_split(labels[pool], _held_count(len(pool), spec.val_fraction), generator)
    train_idx, val_idx = pool[train], pool[val]
    if spec.max_train_samples is not None and len(train_idx) > spec.max_train_samples:
        _, kept = _stratified_split(labels[train_idx], spec.max_train_samples, generator)
        train_idx = train_idx[kept]
    return SplitIndices(train=train_idx, val=val_idx, test=test_idx)


def split_indices(spec: DataSpec, seed: int) -> SplitIndices:
    """The sample positions ``build_splits(spec, seed)`` puts in each split: what a study checks to keep
    a pre-training's training set out of a run's validation set."""
    (_, labels), test, _ = _load(spec)
    return _split_indices(labels, spec, seed, hold_test=test is None)


def build_splits(spec: DataSpec, seed: int) -> Splits:
    """Load ``spec.dataset`` and split, resize and normalize it.

    Steps, in order: load; hold out ``test_fraction`` where the dataset has no test set (digits,
    synthetic; stratified, with a fixed seed so every run sees the same test set); hold out
    ``val_fraction`` of the remaining training set (stratified, seeded by ``seed``); cap the train
    split at ``max_train_samples`` (a stratified random subset); pad/resize to ``image_size``;
    normalize all three splits with the per-channel mean and std of the final train split.

    Args:
        spec: what to load and how to split it.
        seed: seed of the validation split and the train cap.

    Returns:
        The splits; equal seeds give identical tensors.

    Raises:
        DatasetError: the data cannot be read, or the fractions leave the train split empty.
    """
    (images, labels), test, num_classes = _load(spec)
    indices = _split_indices(labels, spec, seed, hold_test=test is None)
    if indices.test is not None:
        test = images[indices.test], labels[indices.test]
    assert test is not None  # the dataset's own, or held out above
    train_idx, val_idx = indices.train, indices.val
    if len(train_idx) == 0:
        raise DatasetError(
            f"{spec.dataset}: {len(labels)} training samples leave none for training after "
            f"data.val_fraction={spec.val_fraction}; lower the fraction or add samples"
        )

    raw = {
        "train": (images[train_idx], labels[train_idx]),
        "val": (images[val_idx], labels[val_idx]),
        "test": test,
    }
    del images  # the full source; the splits hold their own copies
    floats = {name: _to_unit_float(x, spec.image_size) for name, (x, _) in raw.items()}
    mean, std = channel_stats(floats["train"])
    splits = {
        name: TensorSplit(normalize(floats[name], mean, std, inplace=True), y.to(torch.int64))
        for name, (_, y) in raw.items()
    }
    channels, height, width = splits["train"].images.shape[1:]
    return Splits(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=num_classes,
        input_shape=(channels, height, width),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        name=spec.dataset,
    )


def should_pin_memory(source: torch.device | str, target: torch.device | str) -> bool:
    """Whether batches read from ``source`` memory should be pinned before going to ``target``.

    Only host-to-CUDA copies gain: from page-locked memory ``.to(cuda, non_blocking=True)`` is a
    true asynchronous DMA, while from pageable memory it is staged and the host waits. Pinning costs
    a host copy, so CPU training and splits already on the GPU skip it.
    """
    return torch.device(source).type == "cpu" and torch.device(target).type == "cuda"


def num_batches(n: int, batch_size: int, drop_last: bool = False, max_batches: int | None = None) -> int:
    """Number of batches ``iterate_batches`` yields for ``n`` samples (on every rank)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    return count if max_batches is None else min(count, max(max_batches, 0))


def iterate_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: DataSpec | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    max_batches: int | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield this rank's ``(images, labels)`` minibatches of ``split``.

    Indexing tensors in memory is much faster than a DataLoader for datasets this size. Draws from
    ``generator``, in order: one permutation (when ``shuffle``), then per global batch the crop
    offsets and flips of all ``batch_size`` samples (when augmenting). Ranks given generators in the
    same state therefore draw the same numbers, each taking its contiguous ``1/world_size`` slice of
    every global batch: concatenating the ranks' batches gives exactly the ``world_size=1`` batch,
    augmentation included, and restoring the generator state replays an epoch bit for bit.

    With ``drop_last=False`` the final short batch is split as evenly as ``torch.tensor_split``
    allows, so a rank can get an empty batch; every rank still yields the same number of batches,
    which keeps collectives matched.

    Args:
        split: the data.
        batch_size: the GLOBAL batch size; each rank gets ``batch_size // world_size`` samples.
        shuffle: visit the samples in a random order drawn from ``generator``.
        generator: source of every random draw; required when shuffling or augmenting.
        augment: when given and ``augment.augment`` is true, random crop with
            ``augment.crop_padding`` zero padding and, if ``augment.flip``, random horizontal flips.
        rank: this process's index in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        drop_last: skip the final batch when it is short.
        max_batches: stop after this many batches.
        pin_memory: yield batches in page-locked host memory (``should_pin_memory`` decides), so
            that their copy to the GPU can run asynchronously. Values are unchanged.

    Yields:
        ``(images, labels)``: (B, C, H, W) and int64 (B,), on ``split``'s device.

    Raises:
        ValueError: ``batch_size`` is not a positive multiple of ``world_size``, ``rank`` is out of
            range, or randomness is asked for without a ``generator``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of world_size={world_size} "
            "(it is the global batch, split evenly over the ranks)"
        )
    crop_padding, flip = (augment.crop_padding, augment.flip) if augment is not None and augment.augment else (0, False)
    augmenting = crop_padding > 0 or flip
    if generator is None and (shuffle or augmenting):
        raise ValueError("generator is required when shuffle is true or augmentation is on (no global RNG)")
    return _batches(
        split,
        batch_size,
        shuffle=shuffle,
        generator=generator,
        crop_padding=crop_padding,
        flip=flip,
        rank=rank,
        world_size=world_size,
        count=num_batches(len(split), batch_size, drop_last, max_batches),
        pin_memory=pin_memory,
    )


def _batches(
    split: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    crop_padding: int,
    flip: bool,
    rank: int,
    world_size: int,
    count: int,
    pin_memory: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    # A separate generator function, so that iterate_batches validates its arguments when called rather
    # than at the first next().
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # (N,)
    for start in range(0, count * batch_size, batch_size):
        global_idx = order[start : start + batch_size]  # (B,)
        shards = global_idx.tensor_split(world_size)  # contiguous; (B / world_size,) each for full batches
        offset, shard = sum(len(s) for s in shards[:rank]), shards[rank]  # (b,) at global_idx[offset:]
        images = split.images[shard.to(split.images.device)]  # (b, C, H, W)
        labels = split.labels[shard.to(split.labels.device)]  # (b,)
        if crop_padding > 0 or flip:
            assert generator is not None  # checked by iterate_batches
            # Drawn for the whole global batch, so every rank's generator advances alike.
            params = draw_crop_flip(len(global_idx), crop_padding, flip, generator)
            images = apply_crop_flip(images, params.select(slice(offset, offset + len(shard))), crop_padding)
        if pin_memory:
            # The batch is a fresh tensor (indexing copies), so pinning the split itself would not help.
            images, labels = images.pin_memory(), labels.pin_memory()
        yield images, labels


def _load(spec: DataSpec) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, int]:
    """``(train, test or None, num_classes)``; images uint8 or float in [0, 1] (synthetic: unbounded)."""
    match spec.dataset:
        case "cifar10" | "cifar100":
            num_classes: Literal[10, 100] = 10 if spec.dataset == "cifar10" else 100
            if not spec.root:
                raise DatasetError(f"data.root is required for {spec.dataset}: the directory holding its archive")
            train, test = load_cifar(spec.root, num_classes)
            return train, test, num_classes
        case "digits":
            return load_digits_images(), None, DIGITS_CLASSES
        case "synthetic":
            data = make_synthetic(spec.synthetic_shape, spec.synthetic_samples, spec.synthetic_classes)
            return data, None, spec.synthetic_classes
    raise DatasetError(f"unknown data.dataset {spec.dataset!r}")  # pragma: no cover - DataSpec's Literal


def _to_unit_float(images: Tensor, image_size: int | None) -> Tensor:
    """uint8 to float32 in [0, 1] (other dtypes to float32 as they are), then fit to ``image_size``.

    Always a new tensor, which the caller may normalize in place.
    """
    # (N, C, H, W)
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
    return images if image_size is None else fit_size(images, image_size)


def _held_count(n: int, fraction: float) -> int:
    """Samples to hold out: ``fraction * n`` rounded half up, at least one when the fraction is positive."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def _stratified_split(labels: Tensor, n_held: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split indices into ``(rest, held)`` with ``n_held`` held out, proportionally per class.

    Shuffle, stable-sort by label (classes become contiguous runs in random order), then hold out
    ``n_held`` evenly spaced positions: each class gets its share to within one sample, and the
    total is exact. Both index sets come back sorted, so a split keeps the source order.
    """
    n = len(labels)
    perm = torch.randperm(n, generator=generator)  # (N,)
    by_class = perm[torch.sort(labels[perm], stable=True).indices]  # (N,)
    positions = torch.floor((torch.arange(n_held, dtype=torch.float64) + 0.5) * n / max(n_held, 1)).long()
    is_held = torch.zeros(n, dtype=torch.bool)
    is_held[by_class[positions]] = True
    return torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten()
