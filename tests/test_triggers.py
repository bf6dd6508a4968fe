"""Triggers: where BadNets patches land, Blend's arithmetic, pattern + mask triggers from files,
channel handling, poisoning, and bad trigger descriptions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defenses.readers.triggers import Trigger, TriggerError, TriggerSpec, load_image_tensor, poison


def rand_batch(n=4, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def patch_box(trigger: Trigger):
    """(row0, row1, col0, col1) of the mask's non-zero area."""
    rows, cols = torch.nonzero(trigger.mask[0], as_tuple=True)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


@pytest.mark.parametrize("position, top_left", [
    ("bottom_right", (32 - 3 - 1, 32 - 3 - 1)),  # named positions keep one pixel from the border
    ("top_left", (1, 1)),
    ("center", (14, 14)),
    ((5, 20), (5, 20)),
    ([0, 29], (0, 29)),  # as it comes back from JSON
])
def test_badnets_patch_lands_at_the_right_pixels(position, top_left):
    spec = TriggerSpec.from_dict({"kind": "badnets", "size": 3, "position": position, "color": 1.0, "target": 2})
    t = spec.build((3, 32, 32))
    r, c = top_left
    assert patch_box(t) == (r, r + 3, c, c + 3)
    assert t.mask.sum() == 9 and t.target == 2
    x = rand_batch()
    out = t.apply(x)
    assert torch.all(out[:, :, r:r + 3, c:c + 3] == 1.0)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[r:r + 3, c:c + 3] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])  # nothing else changes


def test_badnets_grey_level_and_checkerboard():
    x = rand_batch(c=1, h=28, w=28)
    grey = TriggerSpec(size=4, position="top_left", color=0.5).build((1, 28, 28))
    assert torch.all(grey.apply(x)[:, 0, 1:5, 1:5] == 0.5)
    check = TriggerSpec(size=4, position=(10, 12), color="checkerboard").build((1, 28, 28))
    patch = check.apply(x)[:, 0, 10:14, 12:16]
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(patch, expected.expand_as(patch))


def test_badnets_full_size_patch_fits_at_named_positions():
    t = TriggerSpec(size=8, position="bottom_right").build((3, 8, 8))
    assert t.mask.sum() == 64


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 1.0])
def test_blend_is_a_convex_combination(alpha):
    t = TriggerSpec(kind="blend", alpha=alpha, seed=7).build((3, 16, 16))
    x = rand_batch(h=16, w=16)
    expected = (1 - alpha) * x + alpha * t.pattern
    assert torch.allclose(t.apply(x), expected, atol=1e-6, rtol=0)
    assert torch.equal(t.mask, torch.full((1, 16, 16), float(alpha)))
    # a fixed seed gives the same random pattern; another seed another one
    assert torch.equal(TriggerSpec(kind="blend", alpha=alpha, seed=7).build((3, 16, 16)).pattern, t.pattern)
    assert not torch.equal(TriggerSpec(kind="blend", alpha=alpha, seed=8).build((3, 16, 16)).pattern, t.pattern)


def test_blend_with_an_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "hello_kitty.png")
    t = TriggerSpec(kind="blend", alpha=0.2, image=str(tmp_path / "hello_kitty.png")).build((3, 16, 16))
    assert torch.allclose(t.pattern, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, atol=1e-6)


def test_pattern_and_mask_from_npy(tmp_path):
    pattern = np.random.default_rng(1).random((3, 12, 12)).astype(np.float32)
    mask = np.zeros((12, 12), np.float32)
    mask[2:5, 7:10] = 1.0
    mask[8, 8] = 0.5
    np.save(tmp_path / "pattern.npy", pattern.transpose(1, 2, 0))  # HWC is accepted too
    np.save(tmp_path / "mask.npy", mask)
    spec = TriggerSpec(kind="pattern", image=str(tmp_path / "pattern.npy"), mask_image=str(tmp_path / "mask.npy"),
                       target=1)
    t = spec.build((3, 12, 12))
    assert torch.allclose(t.pattern, torch.from_numpy(pattern))
    assert torch.equal(t.mask, torch.from_numpy(mask)[None])
    x = rand_batch(n=2, h=12, w=12)
    m, p = torch.from_numpy(mask), torch.from_numpy(pattern)
    assert torch.allclose(t.apply(x), (1 - m) * x + m * p, atol=1e-6)
    # 0-255 arrays are scaled to [0, 1]
    np.save(tmp_path / "pattern255.npy", (pattern * 255).round().astype(np.uint8))
    t255 = TriggerSpec(kind="pattern", image=str(tmp_path / "pattern255.npy"),
                       mask_image=str(tmp_path / "mask.npy")).build((3, 12, 12))
    assert torch.allclose(t255.pattern, torch.from_numpy(pattern), atol=1 / 255)


def test_three_channel_pattern_on_one_channel_images(tmp_path):
    pattern = np.random.default_rng(2).random((3, 10, 10)).astype(np.float32)
    np.save(tmp_path / "p.npy", pattern)
    np.save(tmp_path / "m.npy", np.ones((10, 10), np.float32))
    grey = torch.from_numpy(pattern).mean(0, keepdim=True)
    # built for 1-channel images: the pattern is averaged to one channel
    spec = TriggerSpec(kind="pattern", image=str(tmp_path / "p.npy"), mask_image=str(tmp_path / "m.npy"))
    t1 = spec.build((1, 10, 10))
    assert t1.pattern.shape == (1, 10, 10) and torch.allclose(t1.pattern, grey)
    # a 3-channel trigger applied to 1-channel images does the same
    t3 = Trigger(torch.from_numpy(pattern), torch.ones(1, 10, 10))
    out = t3.apply(rand_batch(n=2, c=1, h=10, w=10))
    assert out.shape == (2, 1, 10, 10) and torch.allclose(out[0], grey)


def test_trigger_size_must_match_images():
    t = TriggerSpec().build((3, 32, 32))
    with pytest.raises(TriggerError, match="pixels but the images are"):
        t.apply(rand_batch(h=28, w=28))


@pytest.mark.parametrize("rate, n", [(0.1, 50), (0.25, 10), (0.5, 7), (0.0, 10), (1.0, 6)])
def test_poison_relabels_round_rate_n(rate, n):
    t = TriggerSpec(size=2, target=3).build((1, 8, 8))
    x = rand_batch(n=n, c=1, h=8, w=8)
    y = torch.arange(n) % 3  # never the target before poisoning
    px, py, idx = poison(x, y, t, rate, seed=1)
    k = round(rate * n)
    assert len(idx) == k == len(set(idx.tolist()))
    assert int((py == 3).sum()) == k and torch.all(py[idx] == 3)
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(px[rest], x[rest]) and torch.equal(py[rest], y[rest])
    assert torch.equal(px[idx], t.apply(x[idx]))
    assert torch.equal(poison(x, y, t, rate, seed=1)[2], idx)  # reproducible
    assert torch.equal(x, rand_batch(n=n, c=1, h=8, w=8))  # inputs untouched


def test_spec_round_trips_through_a_dict():
    spec = TriggerSpec(kind="badnets", size=4, position=(3, 4), color="checkerboard", target=5)
    d = spec.to_dict()
    assert d["position"] == [3, 4]
    assert TriggerSpec.from_dict(d) == spec


@pytest.mark.parametrize("settings, shape, fragment", [
    ({"size": 33}, (3, 32, 32), "patch size must be a whole number from 1 to 32"),
    ({"size": 0}, (3, 32, 32), "patch size"),
    ({"size": 3, "position": (30, 30)}, (3, 32, 32), "does not fit"),
    ({"kind": "blend", "alpha": 0}, (3, 32, 32), "alpha must be in (0, 1]"),
    ({"kind": "blend", "alpha": 1.5}, (3, 32, 32), "alpha must be in (0, 1]"),
    ({"kind": "warp"}, (3, 32, 32), "Unknown trigger kind 'warp'"),
    ({"position": "bottom_middle"}, (3, 32, 32), "Unknown patch position 'bottom_middle'"),
    ({"position": "somewhere"}, (3, 32, 32), "Unknown patch position"),
    ({"position": ("a", 2)}, (3, 32, 32), "Unknown patch position"),
    ({"target": -1}, (3, 32, 32), "target label must be a non-negative whole number"),
    ({"target": 1.5}, (3, 32, 32), "target label"),
    ({"color": 2.0}, (3, 32, 32), "grey level in [0, 1]"),
    ({"color": "red"}, (3, 32, 32), "grey level in [0, 1]"),
    ({"kind": "pattern", "image": "p.npy"}, (3, 32, 32), "needs both a pattern image and a mask image"),
])
def test_bad_specs(settings, shape, fragment):
    with pytest.raises(TriggerError) as info:
        TriggerSpec(**settings).build(shape)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_bad_spec_dicts_and_files(tmp_path):
    with pytest.raises(TriggerError, match="Unknown trigger settings colour"):
        TriggerSpec.from_dict({"kind": "badnets", "colour": 1.0})
    with pytest.raises(TriggerError, match="No trigger image at"):
        load_image_tensor(str(tmp_path / "nope.png"), (3, 8, 8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(TriggerError, match="Could not read the trigger image"):
        load_image_tensor(str(tmp_path / "broken.png"), (3, 8, 8))
    np.save(tmp_path / "flat.npy", np.zeros(8))
    with pytest.raises(TriggerError, match="Could not read the trigger image"):
        load_image_tensor(str(tmp_path / "flat.npy"), (3, 8, 8))


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_poison_rate_out_of_range(rate):
    t = TriggerSpec(size=2).build((1, 8, 8))
    with pytest.raises(TriggerError, match="poison rate"):
        poison(rand_batch(n=10, c=1, h=8, w=8), torch.zeros(10, dtype=torch.long), t, rate)
