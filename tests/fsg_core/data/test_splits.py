"""build_splits (disjoint, covering, seeded, stratified, train-only stats) and iterate_batches (sharding, replay)."""

from __future__ import annotations

import pytest
import torch

from fsg_core.data import Splits, TensorSplit, build_splits, iterate_batches, num_batches, should_pin_memory
from fsg_core.data.synthetic import make_synthetic
from fsg_core.data.transforms import channel_stats
from fsg_core.spec import DataSpec

SPEC = DataSpec(dataset="synthetic", synthetic_samples=300, synthetic_classes=5, synthetic_shape=(3, 6, 6))


def unnormalize(split: TensorSplit, splits: Splits) -> torch.Tensor:
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return split.images * std + mean


def source_indices(splits: Splits, spec: DataSpec = SPEC) -> dict[str, torch.Tensor]:
    """Which rows of the raw synthetic data each split holds, found by nearest neighbour."""
    raw, labels = make_synthetic(spec.synthetic_shape, spec.synthetic_samples, spec.synthetic_classes)
    found = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        flat = unnormalize(split, splits).flatten(1)
        distances = torch.cdist(flat, raw.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")  # (n, N)
        nearest = distances.min(1)
        assert torch.all(nearest.values < 1e-3), "every split image is a source image, unchanged"
        assert torch.equal(labels[nearest.indices], split.labels)
        found[name] = nearest.indices
    return found


# ----- build_splits -----


def test_splits_are_disjoint_and_cover_the_data() -> None:
    found = source_indices(build_splits(SPEC, seed=0))
    everything = torch.cat(list(found.values()))
    assert len(everything) == SPEC.synthetic_samples
    assert torch.equal(everything.sort().values, torch.arange(SPEC.synthetic_samples))
    assert len(found["test"]) == 60 and len(found["val"]) == 24  # 20% of 300, then 10% of 240


def test_same_seed_same_splits_different_seed_different_validation() -> None:
    a, b, c = build_splits(SPEC, seed=0), build_splits(SPEC, seed=0), build_splits(SPEC, seed=1)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)
    found_a, found_c = source_indices(a), source_indices(c)
    assert not torch.equal(found_a["val"], found_c["val"])
    # Like CIFAR's official test set, the held-out test images do not move with the run's seed.
    assert torch.equal(found_a["test"], found_c["test"])


def test_holdouts_are_stratified() -> None:
    splits = build_splits(SPEC, seed=3)  # 60 samples per class
    test_counts = torch.bincount(splits.test.labels, minlength=5)
    val_counts = torch.bincount(splits.val.labels, minlength=5)
    assert torch.all(test_counts == 12)
    assert int(val_counts.min()) >= 4 and int(val_counts.max()) <= 5


def test_no_validation_gives_an_empty_split_with_the_right_shape() -> None:
    splits = build_splits(SPEC.model_copy(update={"val_fraction": 0.0}), seed=0)
    assert len(splits.val) == 0
    assert splits.val.images.shape == (0, 3, 6, 6) and splits.val.images.dtype == torch.float32
    assert splits.val.labels.shape == (0,) and splits.val.labels.dtype == torch.int64
    assert len(splits.train) == 240


def test_max_train_samples_caps_train_after_validation() -> None:
    full = build_splits(SPEC, seed=0)
    capped = build_splits(SPEC.model_copy(update={"max_train_samples": 50}), seed=0)
    assert len(capped.train) == 50
    found_full, found_capped = source_indices(full), source_indices(capped)
    assert torch.equal(found_full["val"], found_capped["val"])  # the cap never touches validation
    assert set(found_capped["train"].tolist()) <= set(found_full["train"].tolist())
    assert torch.bincount(capped.train.labels, minlength=5).tolist() == [10] * 5


def test_normalization_uses_train_statistics_only() -> None:
    splits = build_splits(SPEC, seed=0)
    train_raw = unnormalize(splits.train, splits)
    mean, std = channel_stats(train_raw)
    assert torch.allclose(torch.tensor(splits.mean), mean, atol=1e-5)
    assert torch.allclose(torch.tensor(splits.std), std, atol=1e-5)
    assert torch.allclose(splits.train.images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(splits.train.images.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    everything = torch.cat([train_raw, unnormalize(splits.val, splits), unnormalize(splits.test, splits)])
    assert not torch.allclose(channel_stats(everything)[0], mean, atol=1e-4)


def test_image_size_pads_up_and_resizes_down() -> None:
    padded = build_splits(SPEC.model_copy(update={"image_size": 10}), seed=0)
    assert padded.input_shape == (3, 10, 10) and padded.test.images.shape[1:] == (3, 10, 10)
    big = SPEC.model_copy(update={"synthetic_shape": (3, 16, 16), "image_size": 8})
    resized = build_splits(big, seed=0)
    assert resized.input_shape == (3, 8, 8)
    assert resized.train.images.shape[1:] == resized.val.images.shape[1:] == (3, 8, 8)


# ----- iterate_batches -----


def small_split(n: int = 50) -> TensorSplit:
    images = torch.arange(n * 2 * 4 * 4, dtype=torch.float32).view(n, 2, 4, 4)
    return TensorSplit(images, torch.arange(n))


def test_an_epoch_visits_every_sample_once() -> None:
    split = small_split()
    batches = list(iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, torch.arange(50)) and not torch.equal(labels, torch.arange(50))
    for images, y in batches:
        assert torch.equal(images, split.images[y])


def test_without_shuffle_the_order_is_kept_and_no_generator_is_needed() -> None:
    batches = list(iterate_batches(small_split(), 16, shuffle=False, generator=None))
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "max_batches", "expected"),
    [
        (50, 16, False, None, 4),
        (50, 16, True, None, 3),
        (50, 16, False, 2, 2),
        (48, 16, False, None, 3),
        (0, 8, False, None, 0),
    ],
)
def test_num_batches(n: int, batch_size: int, drop_last: bool, max_batches: int | None, expected: int) -> None:
    assert num_batches(n, batch_size, drop_last, max_batches) == expected
    split = small_split(n)
    batches = iterate_batches(
        split, batch_size, shuffle=False, generator=None, drop_last=drop_last, max_batches=max_batches
    )
    assert len(list(batches)) == expected


def test_same_generator_seed_gives_identical_augmented_batches() -> None:
    split, augment = small_split(), DataSpec(crop_padding=2)

    def epoch(generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(iterate_batches(split, 16, shuffle=True, generator=generator, augment=augment))

    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()  # what a checkpoint saves at the start of an epoch
    first = epoch(generator)
    generator.set_state(state)
    replay = epoch(generator)
    other = epoch(torch.Generator().manual_seed(6))
    for (x1, y1), (x2, y2) in zip(first, replay, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, other, strict=True))
    assert not torch.equal(first[0][0], split.images[first[0][1]])  # augmentation did something


def test_augment_off_in_the_spec_means_no_augmentation() -> None:
    split = small_split()
    plain = iterate_batches(split, 16, shuffle=False, generator=None, augment=DataSpec(augment=False))
    for images, labels in plain:
        assert torch.equal(images, split.images[labels])


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("augment", [None, DataSpec(crop_padding=1)])
def test_rank_slices_concatenate_to_the_single_process_batch(drop_last: bool, augment: DataSpec | None) -> None:
    split = small_split()  # 50 samples: batches of 16, 16, 16 and a short one of 2

    def batches(rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)  # every rank seeds alike
        it = iterate_batches(
            split,
            16,
            shuffle=True,
            generator=generator,
            augment=augment,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        return list(it)

    single, rank0, rank1 = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(single) == len(rank0) == len(rank1) == (3 if drop_last else 4)
    for (x, y), (x0, y0), (x1, y1) in zip(single, rank0, rank1, strict=True):
        if len(y) == 16:
            assert len(y0) == len(y1) == 8
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_batch_size_must_split_over_the_ranks() -> None:
    with pytest.raises(ValueError, match="batch_size=10 must be a positive multiple of world_size=4"):
        iterate_batches(small_split(), 10, shuffle=False, generator=None, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        iterate_batches(small_split(), 8, shuffle=False, generator=None, rank=2, world_size=2)


def test_randomness_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="generator is required"):
        iterate_batches(small_split(), 8, shuffle=True, generator=None)
    with pytest.raises(ValueError, match="generator is required"):
        iterate_batches(small_split(), 8, shuffle=False, generator=None, augment=DataSpec())


# ----- pinned memory -----


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("cpu", "cuda", True),  # host batches bound for a GPU: pinned, so the copy is asynchronous
        ("cpu", "cuda:1", True),
        (torch.device("cpu"), torch.device("cuda", 0), True),
        ("cpu", "cpu", False),  # CPU training: nothing changes
        ("cuda", "cuda", False),  # a split already in GPU memory
        ("cuda:0", "cpu", False),
        ("meta", "cuda", False),
    ],
)
def test_should_pin_memory(source: str | torch.device, target: str | torch.device, expected: bool) -> None:
    assert should_pin_memory(source, target) is expected


@pytest.mark.parametrize("pin", [True, False])
def test_pinned_batches_are_pinned_and_unchanged(monkeypatch: pytest.MonkeyPatch, pin: bool) -> None:
    pinned: list[torch.Tensor] = []

    def fake_pin_memory(self: torch.Tensor) -> torch.Tensor:  # pinning itself needs a CUDA runtime
        pinned.append(self)
        return self.clone()

    split, augment = small_split(), DataSpec(crop_padding=1)

    def epoch(pin_memory: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(3)
        return list(
            iterate_batches(split, 16, shuffle=True, generator=generator, augment=augment, pin_memory=pin_memory)
        )

    plain = epoch(False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin_memory)
    got = epoch(pin)
    assert len(pinned) == (2 * len(plain) if pin else 0)  # images and labels of every batch
    for (x, y), (px, py) in zip(plain, got, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


@pytest.mark.parametrize("seed", [0, 7])
def test_split_indices_name_the_samples_build_splits_puts_in_each_split(seed: int) -> None:
    from fsg_core.data import _load, split_indices

    spec = DataSpec.model_validate({"dataset": "digits", "max_train_samples": 500})
    (_, labels), _, _ = _load(spec)
    built = build_splits(spec, seed)
    idx = split_indices(spec, seed)
    assert idx.test is not None
    assert torch.equal(labels[idx.train].to(torch.int64), built.train.labels)
    assert torch.equal(labels[idx.val].to(torch.int64), built.val.labels)
    assert torch.equal(labels[idx.test].to(torch.int64), built.test.labels)
    every = torch.cat([idx.train, idx.val, idx.test])
    assert len(set(every.tolist())) == len(every)  # no sample in two splits
