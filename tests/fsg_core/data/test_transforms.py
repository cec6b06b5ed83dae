"""Transforms against independent references: numpy statistics, explicit per-sample crop loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsg_core.data.transforms import (
    CropFlip,
    apply_crop_flip,
    channel_stats,
    draw_crop_flip,
    fit_size,
    normalize,
    random_crop_flip,
)


def images(n: int = 16, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# ----- fit_size -----


def test_fit_size_pads_symmetrically_with_zeros() -> None:
    x = images(c=1) + 5.0  # no zeros inside, so the border is recognisable
    out = fit_size(x, 12)
    assert out.shape == (16, 1, 12, 12)
    assert torch.equal(out[..., 2:10, 2:10], x)
    border = torch.ones(12, 12, dtype=torch.bool)
    border[2:10, 2:10] = False
    assert torch.all(out[..., border] == 0)


def test_fit_size_odd_padding_puts_the_extra_pixel_last() -> None:
    out = fit_size(images() + 5.0, 11)
    assert out.shape == (16, 3, 11, 11)
    assert torch.all(out[..., :1, :] == 0) and torch.all(out[..., 9:, :] == 0)
    assert torch.all(out[..., 1:9, 1:9] != 0)


def test_fit_size_resizes_down_with_antialiasing() -> None:
    x = images(h=32, w=32)
    out = fit_size(x, 16)
    assert out.shape == (16, 3, 16, 16)
    # A 2x antialiased bilinear downscale of a constant image is that constant.
    flat = torch.full((2, 3, 32, 32), 0.25)
    assert torch.allclose(fit_size(flat, 16), torch.full((2, 3, 16, 16), 0.25))
    # And it averages: the mean brightness is kept to within boundary effects.
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.1)


def test_fit_size_same_size_is_a_no_op() -> None:
    x = images()
    assert fit_size(x, 8) is x


# ----- channel_stats and normalize -----


def test_channel_stats_match_numpy() -> None:
    x = images(n=10_000, c=3, h=4, w=4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3.0
    mean, std = channel_stats(x)
    ref = x.double().numpy()
    assert np.allclose(mean.numpy(), ref.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std.numpy(), ref.std(axis=(0, 2, 3)), atol=1e-6)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == (3,)


def test_channel_stats_of_a_constant_channel_give_std_one() -> None:
    x = images(c=2)
    x[:, 1] = 0.7
    mean, std = channel_stats(x)
    assert mean[1].item() == pytest.approx(0.7) and std[1].item() == 1.0


def test_channel_stats_refuse_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        channel_stats(torch.zeros(0, 3, 8, 8))


def test_normalize_gives_zero_mean_unit_std_and_can_work_in_place() -> None:
    x = images(n=256) * 3.0 + 1.0
    mean, std = channel_stats(x)
    out = normalize(x, mean, std)
    assert out is not x
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    assert normalize(x, mean, std, inplace=True) is x and torch.equal(x, out)


# ----- crop and flip -----


def reference_crop_flip(x: torch.Tensor, params: CropFlip, padding: int) -> torch.Tensor:
    """The obvious per-sample loop."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        top, left = int(params.top[i]), int(params.left[i])
        crop = padded[i, :, top : top + h, left : left + w]
        out.append(crop.flip(-1) if params.flip[i] else crop)
    return torch.stack(out)


def test_no_padding_and_no_flip_is_the_identity() -> None:
    x = images()
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert torch.equal(random_crop_flip(x, 0, False, generator), x)
    assert torch.equal(generator.get_state(), state)  # nothing drawn


def test_flip_only_mirrors_about_half_the_samples() -> None:
    x = images(n=200)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    assert 60 < int(mirrored.sum()) < 140


@pytest.mark.parametrize("flip", [False, True])
def test_crops_are_windows_of_the_padded_image(flip: bool) -> None:
    x, padding = images(n=64), 4
    params = draw_crop_flip(64, padding, flip, torch.Generator().manual_seed(3))
    assert int(params.top.min()) >= 0 and int(params.top.max()) <= 2 * padding
    assert len(set(params.left.tolist())) > 5  # offsets really vary
    out = apply_crop_flip(x, params, padding)
    assert torch.equal(out, reference_crop_flip(x, params, padding))


def test_random_crop_flip_matches_its_draws() -> None:
    x = images(n=32)
    out = random_crop_flip(x, 2, True, torch.Generator().manual_seed(7))
    params = draw_crop_flip(32, 2, True, torch.Generator().manual_seed(7))
    assert torch.equal(out, reference_crop_flip(x, params, 2))


def test_same_seed_same_augmentation_different_seed_different() -> None:
    x = images(n=32)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, 4, True, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_params_select_slices_every_field() -> None:
    params = draw_crop_flip(10, 4, True, torch.Generator().manual_seed(0))
    part = params.select(slice(2, 5))
    assert len(part) == 3
    assert torch.equal(part.top, params.top[2:5]) and torch.equal(part.flip, params.flip[2:5])
