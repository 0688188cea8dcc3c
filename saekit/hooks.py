"""
Hook points: TransformerLens-style names for the activations inside a nanochat model.

SAELens, SAEDashboard and Neuronpedia name activations like `blocks.3.hook_resid_post`. saekit
uses the same names and resolves them to nanochat's modules (a forward hook on a module's input
or output), so they mean the same thing on saekit's `GPT` and on nanochat's own:

| name | on nanochat |
| --- | --- |
| `blocks.{i}.hook_resid_pre` | input of `transformer.h[i]` (after the resid/x0 lambda mixing) |
| `blocks.{i}.hook_resid_post` | output of `transformer.h[i]` |
| `blocks.{i}.hook_attn_out` | output of `transformer.h[i].attn` |
| `blocks.{i}.hook_mlp_out` | output of `transformer.h[i].mlp` |
| `blocks.{i}.mlp.hook_post` | input of `transformer.h[i].mlp.c_proj` (the ReLU² hidden layer) |

In current-era nanochat the lambdas rescale the stream between blocks, so `resid_post` of layer i
is *not* `resid_pre` of layer i+1.

Any other model maps onto the same names with a `HookLayout`: where its blocks live, and for
each kind of hook point the module (relative to a block) and whether its input or output is
meant. For example, a Hugging Face GPT-2:

    GPT2_LAYOUT = HookLayout(blocks="transformer.h", points={
        "hook_resid_pre": ("", "input"), "hook_resid_post": ("", "output"),
        "hook_attn_out": ("attn", "output"), "hook_mlp_out": ("mlp", "output"),
        "mlp.hook_post": ("mlp.c_proj", "input")})

Three tools use them: `capture` (record several hook points in one forward pass, optionally
stopping the pass after the last one), `patch` (replace or edit an activation in flight) and
`run_until` (the forward pass truncated after a hook point, for speed).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass(frozen=True)
class HookLayout:
    """Where a model's hook points live: its block list, and per kind (module inside a block, input|output)."""

    blocks: str
    points: dict[str, tuple[str, str]] = field(default_factory=dict)


NANOCHAT_LAYOUT = HookLayout(
    blocks="transformer.h",
    points={
        "hook_resid_pre": ("", "input"),
        "hook_resid_post": ("", "output"),
        "hook_attn_out": ("attn", "output"),
        "hook_mlp_out": ("mlp", "output"),
        "mlp.hook_post": ("mlp.c_proj", "input"),
    },
)


class HookError(KeyError):
    """An unknown hook-point name, or one that does not resolve on this model."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


@dataclass(frozen=True)
class HookPoint:
    name: str  # e.g. "blocks.3.hook_resid_post"
    layer: int
    module_path: str  # e.g. "transformer.h.3"
    side: str  # "input" or "output"


def hook_points(model: nn.Module, layout: HookLayout = NANOCHAT_LAYOUT) -> dict[str, HookPoint]:
    """Every hook point of `model`, in forward order (layer by layer)."""
    blocks = model.get_submodule(layout.blocks)
    order = ["hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
    kinds = sorted(layout.points, key=lambda k: order.index(k) if k in order else len(order))
    points = {}
    for i in range(len(blocks)):
        for kind in kinds:
            sub, side = layout.points[kind]
            path = f"{layout.blocks}.{i}" + (f".{sub}" if sub else "")
            name = f"blocks.{i}.{kind}"
            points[name] = HookPoint(name, i, path, side)
    return points


def resolve(model: nn.Module, name: str, layout: HookLayout = NANOCHAT_LAYOUT) -> tuple[HookPoint, nn.Module]:
    """The hook point called `name` and the module it hooks; a clear error for an unknown name."""
    points = hook_points(model, layout)
    if name not in points:
        close = difflib.get_close_matches(name, list(points), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        n_layers = max(p.layer for p in points.values()) + 1
        kinds = list(dict.fromkeys(p.name.split(".", 2)[2] for p in points.values()))
        raise HookError(f"unknown hook point {name!r}.{hint} Valid names are blocks.{{0..{n_layers - 1}}}."
                        f"{{{', '.join(kinds)}}}")
    point = points[name]
    return point, model.get_submodule(point.module_path)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; never escapes saekit."""


def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _hooked(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None],
            layout: HookLayout) -> Iterator[None]:
    """Call `fn(activation)` at a hook point; a returned tensor replaces the activation."""
    point, module = resolve(model, name, layout)
    if point.side == "input":
        def pre_hook(_module, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        handle = module.register_forward_pre_hook(pre_hook)
    else:
        def post_hook(_module, _args, output):
            new = fn(_output_tensor(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


class Captured(dict):
    """The activations recorded by `capture`, by hook-point name (each the latest forward pass's)."""


@contextmanager
def capture(model: nn.Module, names: str | list[str], *, detach: bool = True, stop: bool = False,
            layout: HookLayout = NANOCHAT_LAYOUT) -> Iterator[Captured]:
    """Record the activations at `names` during the forward passes inside the `with` block.

    With `stop=True`, the forward pass ends as soon as the last of `names` (in forward order) has
    been recorded: the model call inside the block returns `None` instead of logits, and none of
    the later layers run.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("capture needs at least one hook-point name")
    order = list(hook_points(model, layout))
    for name in names:
        resolve(model, name, layout)
    last = max(names, key=order.index)
    captured = Captured()

    def recorder(name):
        def record(activation):
            captured[name] = activation.detach() if detach else activation
            if stop and name == last:
                raise _StopForward

        return record

    with ExitStack() as stack:
        for name in names:
            stack.enter_context(_hooked(model, name, recorder(name), layout))
        stack.enter_context(_stoppable(model, stop))
        yield captured


@contextmanager
def patch(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None],
          layout: HookLayout = NANOCHAT_LAYOUT) -> Iterator[None]:
    """Edit the activation at `name` in flight: `fn(activation)` returns its replacement (or None to leave it).

        with patch(model, "blocks.2.hook_resid_post", lambda x: x + direction):
            logits = model(ids)
    """
    with _hooked(model, name, fn, layout):
        yield


def run_until(model: nn.Module, ids: torch.Tensor, names: str | list[str],
              layout: HookLayout = NANOCHAT_LAYOUT) -> Captured:
    """Run `model(ids)` only as far as the last of `names`; return the recorded activations."""
    with torch.no_grad(), capture(model, names, stop=True, layout=layout) as captured:
        model(ids)
    return captured


@contextmanager
def _stoppable(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Make `model(...)` return None when a hook raises `_StopForward`, for the duration of the block."""
    if not enabled:
        yield
        return

    own = model.__dict__.get("forward")  # an instance-level forward someone else installed
    original = model.forward

    def forward(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except _StopForward:
            return None

    model.forward = forward
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
