"""The permutation symmetries of a model, for weight matching (``analysis.alignment``).

Three sources, tried in order:

- declared: the module has an attribute ``permutation_spec``, ``{name: [(parameter, axis), ...]}``
  or with ``(parameter, axis, block, groups)`` entries: each named permutation reorders the units
  on those axes (``block`` consecutive entries per unit, default 1; ``groups`` repetitions of the
  units along the axis, default 1), its size read from the first axis;
- derived from the module structure: its parameterised layers in registration order must form a
  chain of ``nn.Linear``, ``nn.Conv2d`` (no groups) and ``nn.LSTM`` (one direction, no projection)
  with only parameter-free layers between them (activations, pooling, dropout, flatten). Each
  layer's output units but the last are permuted, with the next layer's inputs (after a flatten, in
  blocks of the pixels per channel); an LSTM's hidden units across its four gates, ``weight_ih``,
  ``weight_hh`` (rows and columns), both biases and the next layer's inputs;
- otherwise none: "no permutation spec for <module>".

Registration order is not data flow, and a forward may apply anything between the layers, so a
spec is kept only when a random permutation leaves the model's outputs unchanged (``check``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from weightspace.analysis.alignment import PermutationSpec, apply_permutation
from weightspace.model import Layout

LAYERS = (nn.Linear, nn.Conv2d, nn.LSTM)


class NoSpec(ValueError):
    """The model has no permutation spec; the message is "no permutation spec for <what>"."""


def declared(module: nn.Module, layout: Layout) -> PermutationSpec:
    """The spec the module declares in its ``permutation_spec`` attribute (module docstring)."""
    shapes = dict(zip(layout.names, layout.shapes))
    sizes, axes = {}, {}
    for perm, entries in module.permutation_spec.items():
        full = []
        for entry in entries:
            name, axis, block, groups = (*entry, 1, 1)[:4]
            if name not in shapes or not 0 <= axis < len(shapes[name]):
                raise NoSpec(f"no permutation spec for {type(module).__name__}: its permutation_spec names "
                             f"{name!r} axis {axis}, which the recorded parameters lack")
            full.append((name, int(axis), int(block), int(groups)))
        name, axis, block, groups = full[0]
        sizes[perm], axes[perm] = shapes[name][axis] // (block * groups), tuple(full)
    return PermutationSpec(sizes, axes)


def _chain(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The parameterised leaf layers in registration order; NoSpec for any other kind."""
    layers = []
    for name, m in module.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            if not isinstance(m, LAYERS):
                raise NoSpec(f"no permutation spec for {type(m).__name__} ({name})")
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise NoSpec(f"no permutation spec for a grouped Conv2d ({name})")
            if isinstance(m, nn.LSTM) and (m.bidirectional or m.proj_size):
                raise NoSpec(f"no permutation spec for a bidirectional or projected LSTM ({name})")
            layers.append((name, m))
    if len(layers) < 2:
        raise NoSpec(f"no permutation spec for {type(module).__name__}: fewer than two layers")
    return layers


def _width(m: nn.Module) -> int:
    return m.hidden_size if isinstance(m, nn.LSTM) else m.out_features if isinstance(m, nn.Linear) \
        else m.out_channels


def _inputs(m: nn.Module) -> int:
    return m.input_size if isinstance(m, nn.LSTM) else m.in_features if isinstance(m, nn.Linear) \
        else m.in_channels


def derived(module: nn.Module) -> PermutationSpec:
    """The spec of a chain of Linear, Conv2d and LSTM layers (module docstring)."""
    layers = _chain(module)
    sizes, axes = {}, {}
    for k, (name, m) in enumerate(layers):
        p = lambda n, name=name: f"{name}.{n}" if name else n  # noqa: E731 - the parameter's full name
        own: list[tuple[str, int, int, int]] = []
        if isinstance(m, nn.LSTM):
            for layer in range(m.num_layers):
                perm = f"{name}.l{layer}" if name else f"l{layer}"
                sizes[perm] = m.hidden_size
                axes[perm] = [(p(f"weight_ih_l{layer}"), 0, 1, 4), (p(f"weight_hh_l{layer}"), 0, 1, 4),
                              (p(f"weight_hh_l{layer}"), 1, 1, 1)]
                if m.bias:
                    axes[perm] += [(p(f"bias_ih_l{layer}"), 0, 1, 4), (p(f"bias_hh_l{layer}"), 0, 1, 4)]
                if layer + 1 < m.num_layers:
                    axes[perm].append((p(f"weight_ih_l{layer + 1}"), 1, 1, 1))
            last = f"{name}.l{m.num_layers - 1}" if name else f"l{m.num_layers - 1}"
        else:
            last = name
            own = [(p("weight"), 0, 1, 1)] + ([(p("bias"), 0, 1, 1)] if m.bias is not None else [])
        if k == len(layers) - 1:
            break       # the outputs of the last layer are the model's: never permuted
        if own:
            sizes[last], axes[last] = _width(m), own
        nxt_name, nxt = layers[k + 1]
        width, fan_in = _width(m), _inputs(nxt)
        if fan_in % width:
            raise NoSpec(f"no permutation spec for {type(module).__name__}: {nxt_name} takes {fan_in} inputs "
                         f"from {width} units of {name}")
        weight = f"{nxt_name}.weight_ih_l0" if isinstance(nxt, nn.LSTM) else f"{nxt_name}.weight"
        axes[last].append((weight, 1, fan_in // width, 1))
    return PermutationSpec(sizes, {k: tuple(v) for k, v in axes.items()})


def check(module: nn.Module, layout: Layout, spec: PermutationSpec, theta: torch.Tensor, x: torch.Tensor,
          seed: int = 0) -> None:
    """NoSpec unless a random permutation of every unit leaves the outputs on ``x`` unchanged."""
    gen = torch.Generator().manual_seed(seed)
    perms = {k: torch.randperm(n, generator=gen).numpy() for k, n in spec.sizes.items()}
    permuted = torch.as_tensor(apply_permutation(theta.cpu().numpy(), layout, perms, spec)).to(theta.device)
    with torch.no_grad():
        y = functional_call(module, layout.unflatten(theta), (x,))
        y2 = functional_call(module, layout.unflatten(permuted), (x,))
    if not torch.allclose(y, y2, rtol=1e-4, atol=1e-5 * float(y.abs().max()) + 1e-6):
        raise NoSpec(f"no permutation spec for {type(module).__name__}: permuting its units changes its "
                     "outputs")


def spec_for(module: nn.Module, layout: Layout, theta: torch.Tensor, x: torch.Tensor) -> PermutationSpec:
    """The model's permutation spec, declared or derived, checked on the inputs ``x``; NoSpec if none."""
    spec = declared(module, layout) if hasattr(module, "permutation_spec") else derived(module)
    missing = {a[0] for ax in spec.axes.values() for a in ax} - set(layout.names)
    if missing:
        raise NoSpec(f"no permutation spec for {type(module).__name__}: {sorted(missing)} are not recorded")
    check(module, layout, spec, theta, x)
    return spec
