"""Permutation alignment of two networks by weight matching.

Hidden units can be reordered without changing the function a network computes: permute
the output units of a layer and, with them, the matching inputs of the next layer. Two
independently trained networks may therefore be far apart in weight space only because
their units are listed in a different order. Weight matching (Ainsworth, Hayase and
Srinivasa 2022, "Git Re-Basin: Merging Models modulo Permutation Symmetries", Algorithm 1)
chooses the permutations of network B that maximise the inner product <theta_A, pi(theta_B)>,
which is the same as minimising the distance ||theta_A - pi(theta_B)||. It is coordinate
ascent: each permutation in turn, with the others held fixed, is an exact linear assignment
problem, solved with the Hungarian method, until no permutation improves.

For weightspace.model.CNN there are three permutations, each named after the layer whose
output units it reorders: "conv1" (channels), "conv2" (channels) and "fc1" (hidden units).
ReLU and max-pooling act per channel and dropout per unit, so in eval mode the permuted
network computes exactly the same function. The flatten between conv2 and fc1 is
channel-major (column = channel * 49 + pixel), so "conv2" moves fc1's columns in blocks of 49.

Other networks bring their own ``PermutationSpec`` (``analysis.permspec`` derives one from a
model); an axis may then hold several groups of units, such as an LSTM's four gates, each
group reordered by the same permutation.

A permutation is an index array: unit i of the permuted network is unit perm[i] of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from weightspace.model import Layout

# Which permutation acts on each axis of each parameter of weightspace.model.CNN, in
# named_parameters() order (None: that axis is never permuted).
CNN_AXES: dict[str, tuple[str | None, ...]] = {
    "conv1.weight": ("conv1", None, None, None),
    "conv1.bias": ("conv1",),
    "conv2.weight": ("conv2", "conv1", None, None),
    "conv2.bias": ("conv2",),
    "fc1.weight": ("fc1", "conv2"),  # columns: conv2 channel-major, one block of 7*7 pixels per channel
    "fc1.bias": ("fc1",),
    "fc2.weight": (None, "fc1"),
    "fc2.bias": (None,),
}
# Axes where each unit owns a run of consecutive entries rather than one: the flatten after
# the second 2x2 max-pool gives every conv2 channel 7*7 = 49 columns of fc1.weight.
CNN_BLOCKS: dict[tuple[str, int], int] = {("fc1.weight", 1): 7 * 7}


@dataclass(frozen=True)
class PermutationSpec:
    """sizes: units per permutation; axes: the (parameter, axis, block, groups) each acts on.

    block is how many consecutive entries along the axis move together (49 for fc1's columns);
    groups how many times the units repeat along the axis (4 for the gates of an LSTM's rows),
    each group reordered alike: the axis has groups x units x block entries.
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[tuple[str, int, int, int], ...]]


def permutation_spec(layout: Layout) -> PermutationSpec:
    """The permutation symmetries of weightspace.model.CNN's layout; ValueError for any other."""
    if tuple(layout.names) != tuple(CNN_AXES):
        raise ValueError(f"permutation alignment supports only weightspace.model.CNN (parameters "
                         f"{list(CNN_AXES)}), this layout has {list(layout.names)}")
    shapes = dict(zip(layout.names, layout.shapes))
    sizes = {perm: shapes[f"{perm}.weight"][0] for perm in ("conv1", "conv2", "fc1")}
    axes: dict[str, list[tuple[str, int, int, int]]] = {perm: [] for perm in sizes}
    for name, per_axis in CNN_AXES.items():
        if len(shapes[name]) != len(per_axis):
            raise ValueError(f"parameter {name} has shape {shapes[name]}, expected {len(per_axis)} axes")
        for axis, perm in enumerate(per_axis):
            if perm is None:
                continue
            n, length, block = sizes[perm], shapes[name][axis], CNN_BLOCKS.get((name, axis), 1)
            if length != n * block:
                raise ValueError(f"axis {axis} of {name} has {length} entries, "
                                 f"expected {n} {perm} units x {block}")
            axes[perm].append((name, axis, block, 1))
    return PermutationSpec(sizes, {p: tuple(a) for p, a in axes.items()})


def _split(theta: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    theta = np.asarray(theta)
    if theta.shape != (layout.size,):
        raise ValueError(f"parameter vector has shape {theta.shape}, the layout needs ({layout.size},)")
    return {n: theta[o:o + int(np.prod(s))].reshape(s)
            for n, s, o in zip(layout.names, layout.shapes, layout.offsets)}


def _take(w: np.ndarray, axis: int, perm: np.ndarray, block: int, groups: int = 1) -> np.ndarray:
    """w reordered along axis by perm in each of its groups, moving runs of `block` consecutive entries
    together."""
    s = w.shape
    return np.take(w.reshape(s[:axis] + (groups, len(perm), block) + s[axis + 1:]), perm,
                   axis=axis + 1).reshape(s)


def _permuted(w: np.ndarray, name: str, spec: PermutationSpec, perms: dict[str, np.ndarray],
              skip: tuple[str, int] | None = None) -> np.ndarray:
    """w with every permutation that acts on it applied, except on the axis ``skip`` = (permutation, axis)."""
    for perm, axes in spec.axes.items():
        for pname, axis, block, groups in axes:
            if pname == name and (perm, axis) != skip:
                w = _take(w, axis, perms[perm], block, groups)
    return w


def _check_perms(perms: dict[str, np.ndarray], spec: PermutationSpec) -> dict[str, np.ndarray]:
    """Missing permutations are the identity; unknown names and non-permutations raise."""
    unknown = set(perms) - set(spec.sizes)
    if unknown:
        raise ValueError(f"unknown permutations {sorted(unknown)}; this network has {list(spec.sizes)}")
    out = {}
    for perm, n in spec.sizes.items():
        p = np.asarray(perms.get(perm, np.arange(n)), dtype=np.int64)
        if p.shape != (n,) or not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"perms[{perm!r}] is not a permutation of range({n})")
        out[perm] = p
    return out


def apply_permutation(theta: np.ndarray, layout: Layout, perms: dict[str, np.ndarray],
                      spec: PermutationSpec | None = None) -> np.ndarray:
    """The flat parameter vector of the permuted network (same function, same dtype as theta); ``spec``:
    the network's symmetries (default the CNN's)."""
    spec = spec or permutation_spec(layout)
    perms = _check_perms(perms, spec)
    parts = _split(theta, layout)
    return np.concatenate([_permuted(w, n, spec, perms).reshape(-1) for n, w in parts.items()])


def _objective(a: dict[str, np.ndarray], b: dict[str, np.ndarray], spec: PermutationSpec,
               perms: dict[str, np.ndarray]) -> float:
    """<theta_A, pi(theta_B)> over all parameters (the unpermuted ones add a constant)."""
    return float(sum(np.vdot(a[n], _permuted(b[n], n, spec, perms)) for n in a))


def _rows(w: np.ndarray, axis: int, n: int, block: int, groups: int = 1) -> np.ndarray:
    """w as an (n, -1) matrix with one row per unit along axis (its entries in every group and block, and
    all other axes)."""
    s = w.shape
    return np.moveaxis(w.reshape(s[:axis] + (groups, n, block) + s[axis + 1:]), axis + 1, 0).reshape(n, -1)


def weight_matching(theta_a: np.ndarray, theta_b: np.ndarray, layout: Layout, max_iter: int = 100,
                    seed: int = 0, history: list | None = None,
                    spec: PermutationSpec | None = None) -> dict[str, np.ndarray]:
    """Permutations of network B that (locally) maximise <theta_A, pi(theta_B)>, by weight matching.

    Git Re-Basin, Algorithm 1: start from the identity; in each sweep visit the permutations
    in a random order (from `seed`) and replace each by the solution of the linear assignment
    problem max_P sum_ij C_ij P_ij, where C_ij = sum over every weight and bias that the
    permutation touches of <unit i of A, unit j of B>, with B's other axes permuted by the
    current values of the other permutations (float64). A permutation is replaced only if
    that strictly raises the objective, so the objective never decreases and the loop stops
    at the first sweep that changes nothing (or after max_iter sweeps).

    history, if given, receives one (objective, perms) pair for the identity and one after
    each sweep, with objective = <theta_A, pi(theta_B)> in float64 and perms copied. ``spec``: the
    network's symmetries (default the CNN's). A permutation acting on two axes of one parameter (an
    LSTM's recurrent weights) makes the objective quadratic in it; each axis is then matched with the
    other at its current value, a linearisation, for which the never-decreasing guarantee above holds
    only approximately.
    """
    spec = spec or permutation_spec(layout)
    a = {n: w.astype(np.float64) for n, w in _split(theta_a, layout).items()}
    b = {n: w.astype(np.float64) for n, w in _split(theta_b, layout).items()}
    perms = {perm: np.arange(n) for perm, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    if history is not None:
        history.append((_objective(a, b, spec, perms), {k: v.copy() for k, v in perms.items()}))
    for _ in range(max_iter):
        progress = False
        for perm in rng.permutation(list(spec.sizes)):
            n = spec.sizes[perm]
            cost = np.zeros((n, n))
            for name, axis, block, groups in spec.axes[perm]:
                # the other axes this permutation acts on (an LSTM's recurrent columns) keep its current value
                wb = _permuted(b[name], name, spec, perms, skip=(perm, axis))
                cost += _rows(a[name], axis, n, block, groups) @ _rows(wb, axis, n, block, groups).T
            _, cols = linear_sum_assignment(cost, maximize=True)
            old, new = cost[np.arange(n), perms[perm]].sum(), cost[np.arange(n), cols].sum()
            if new - old > 1e-12 * max(1.0, abs(old)):
                perms[perm], progress = cols, True
        if history is not None:
            history.append((_objective(a, b, spec, perms), {k: v.copy() for k, v in perms.items()}))
        if not progress:
            break
    return perms


def align(theta_a: np.ndarray, theta_b: np.ndarray, layout: Layout, max_iter: int = 100, seed: int = 0,
          history: list | None = None,
          spec: PermutationSpec | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """theta_B permuted to match theta_A (same function as theta_B), and the permutations used."""
    perms = weight_matching(theta_a, theta_b, layout, max_iter=max_iter, seed=seed, history=history,
                            spec=spec)
    return apply_permutation(theta_b, layout, perms, spec), perms
