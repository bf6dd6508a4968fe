"""The default cut of one layer's Hölder constants: the first minimum of their density to the right
of its main mode (a Gaussian KDE, Scott's bandwidth), else mean + u * std, or the top p. Used by
``holder.Holder`` and drawn by the dashboard's density chart (``extras["density"]``)."""
from __future__ import annotations

import math

import numpy as np
import torch

GRID_POINTS = 1024
RISE_TOL = 1e-6  # a density minimum must be followed by a rise of this fraction of the peak


def density_threshold(values: torch.Tensor, u: float = 3.0, top_p: float | None = None,
                      grid_points: int = GRID_POINTS) -> dict:
    """The default cut of one layer's constants, with the density curve it came from.

    Returns {"x": grid, "y": density, "cut": float, "rule": "kde-minimum" | "mean+u*std" |
    "top-p"}. The density (Gaussian KDE, Scott's bandwidth) is fitted to the non-zero
    constants; x and y are empty when it cannot be fitted (fewer than two distinct values)."""
    v = values.detach().double().cpu().numpy()
    live = v[v > 0]
    x, y = [], []
    kde_cut = None
    if np.unique(live).size >= 2:
        from scipy.stats import gaussian_kde

        try:
            kde = gaussian_kde(live)  # Scott's rule is scipy's default bandwidth
        except (np.linalg.LinAlgError, ValueError):
            kde = None
        if kde is not None:
            bw = float(np.sqrt(kde.covariance[0, 0]))
            grid = np.linspace(live.min() - 3 * bw, live.max() + 3 * bw, grid_points)
            dens = kde(grid)
            x, y = grid.tolist(), dens.tolist()
            j = first_minimum_right_of_mode(dens)
            if j is not None:
                kde_cut = float(grid[j])
    if top_p is not None:
        k = int(math.floor(top_p * v.size + 0.5))
        desc = np.sort(v)[::-1]
        if k <= 0:
            cut = float(desc[0])
        elif k >= v.size:
            cut = float(desc[-1]) - 1.0
        else:  # halfway between the last pruned and the first kept value (ties keep both)
            cut = float((desc[k - 1] + desc[k]) / 2)
        return {"x": x, "y": y, "cut": cut, "rule": "top-p"}
    if kde_cut is not None:
        return {"x": x, "y": y, "cut": kde_cut, "rule": "kde-minimum"}
    pop = live if live.size else v
    std = float(pop.std(ddof=1)) if pop.size > 1 else 0.0
    return {"x": x, "y": y, "cut": float(pop.mean()) + u * std, "rule": "mean+u*std"}


def first_minimum_right_of_mode(dens: np.ndarray) -> int | None:
    """Index of the first local minimum to the right of the global maximum: the lowest point
    reached before the density rises again by more than RISE_TOL of the peak; None if it never
    does (the density falls off to the right of its mode)."""
    mode = int(np.argmax(dens))
    tol = RISE_TOL * float(dens[mode])
    lowest = mode
    for j in range(mode + 1, len(dens)):
        if dens[j] < dens[lowest]:
            lowest = j
        elif dens[j] > dens[lowest] + tol:
            return lowest if lowest != mode else None
    return None
