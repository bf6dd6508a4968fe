"""The development zoo's attacks (bench/attacks.py) do what their papers say."""
import torch

from bench.attacks import Attack


def _digits(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 0.5, torch.arange(n) % 10


def test_sig_is_clean_label_and_touches_only_the_target_class():
    x, y = _digits()
    a = Attack("sig", target=3, rate=1.0, params={"delta": 0.4, "freq": 6})
    px, py = a.poison_train(x, y, 10, seed=0)
    assert torch.equal(py, y)  # no label changes
    changed = (px != x).flatten(1).any(1)
    assert torch.equal(changed, y == 3)
    test = a.poisoned_test(x, y, 10)
    assert (test["y_bd"] == 3).all() and (test["y_true"] != 3).all()


def test_wanet_warps_without_a_patch_and_all_to_all_shifts_labels():
    x, y = _digits()
    w = Attack("wanet", target=2, rate=1.0, params={"k": 4, "s": 2.0, "seed": 0}).stamp(x, torch.Generator())
    moved = (w - x).abs() > 1e-3
    assert moved.float().mean() > 0.3  # spread over the image, not a small patch
    a = Attack("all_to_all", target=None, rate=1.0, params={"size": 4})
    _, py = a.poison_train(x, y, 10, seed=0)
    assert torch.equal(py, (y + 1) % 10)


def test_random_patch_moves_between_images():
    x, y = _digits()
    out = Attack("random_patch", target=5, params={"size": 4, "color": "checkerboard"}).stamp(
        torch.zeros(20, 1, 28, 28), torch.Generator().manual_seed(0))
    where = {tuple(torch.nonzero(o[0]).min(0).values.tolist()) for o in out}
    assert len(where) > 10
