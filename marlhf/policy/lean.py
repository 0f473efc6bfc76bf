"""Leaner activations for the update's backward pass, with the same gradients bit for bit.

Eager PyTorch keeps, for the backward, every tensor some operation of the forward saved. Two
blocks of the Llama family (Llama, SmolLM2, Mistral, Qwen2 and the other models whose code is
the same) save tensors the backward can remake for the price of an element-wise operation:

- the gated MLP ``down(silu(gate(x)) * up(x))`` saves ``gate(x)`` (for SiLU's backward),
  ``silu(gate(x))`` and ``up(x)`` (for the product's) and the product (for ``down``'s weight).
  :class:`_GatedDown` saves ``gate(x)`` and ``up(x)`` and remakes the other two: two
  ``intermediate_size``-wide tensors per token and block fewer (2 x 1,536 floats for SmolLM2).
  When ``down`` is not a plain bias-free ``nn.Linear`` (LoRA wraps it, it has a bias or hooks)
  :class:`_GatedSiLU` remakes only ``silu(gate(x))``;
- RMSNorm ``w * (x * rsqrt(mean(x^2) + eps))`` saves ``x``, the reciprocal root and the
  normalised ``x * r`` (for the weight's gradient). :class:`_RMSNorm` saves ``x`` and ``r`` and
  remakes ``x * r``: one ``hidden_size``-wide tensor per norm fewer;
- inside :func:`remade_norm_outputs` (the policy's update forwards), the projections after a
  lean RMSNorm keep the norm's recipe instead of its output, and the backward remakes the output
  from the ``x`` and ``r`` the norm saved: one more ``hidden_size``-wide tensor per norm fewer.

On SmolLM2-135M the first two are over a third of the saved activations. Each backward runs
the kernels the eager graph's nodes run, on the same operands in the same order (``down``'s matrix
products, the product's gradient, SiLU's ``silu_backward``; the norm's chain of products, sums
and the root's derivative, written out as PyTorch's derivative formulas have them), and RMSNorm
hands its input's two gradient terms back separately, in the order the eager nodes would add
them to what the residual stream already holds; so values and gradients are bitwise those of
the eager forms (``tests/agents/test_lean.py``). Double backward (``create_graph=True``) is not
bitwise (the eager graph then uses other kernels for SiLU's derivative).

The lean forms run only when they can matter and are known equal: gradients enabled, float32
operands, autocast off; anything else (sampling, no-grad scoring, bf16) runs the module's own
forward. :func:`make_lean` installs them on a model's modules whose forward was checked equal on
a probe input (so a look-alike module with other maths, such as Gemma's ``1 + w`` norm, keeps
its own); :func:`make_plain` removes them.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The attribute under which an installed module keeps its class's forward.
_PLAIN = "_marlhf_plain_forward"


class _GatedSiLU(torch.autograd.Function):
    """``silu(gate) * up``, saving ``gate`` and ``up`` only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        # In place: no block-sized temporary freed in the forward (glibc would keep the hole).
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up = ctx.saved_tensors
        d_gate = d_up = None
        if ctx.needs_input_grad[1]:  # the product's gradient to `up`: grad * silu(gate)
            d_up = grad * F.silu(gate)
        if ctx.needs_input_grad[0]:  # to silu(gate): grad * up; then SiLU's own backward
            d_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return d_gate, d_up


class _GatedDown(torch.autograd.Function):
    """``linear(silu(gate) * up, weight)`` (a bias-free ``down_proj``), saving ``gate`` and
    ``up`` only: the backward remakes the product ``down_proj`` would have saved.

    The eager ``linear`` of a ``[B, T, K]`` input is a matrix product of its ``[B*T, K]`` view
    with ``weight.t()``; its backward gives the input ``grad.mm(weight)`` and the weight
    ``grad.t().mm(input)`` (PyTorch's ``mm`` backward for a transposed, column-major second
    operand), which is what this backward computes.
    """

    @staticmethod
    def forward(
        ctx: Any, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate).mul_(up), weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up, weight = ctx.saved_tensors
        silu = F.silu(gate)
        flat = grad.reshape(-1, grad.shape[-1])
        d_weight = None
        if ctx.needs_input_grad[2]:
            product = silu * up
            d_weight = flat.t().mm(product.reshape(-1, product.shape[-1]))
            del product
        d_gate = d_up = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            d_product = flat.mm(weight).view(gate.shape)
            if ctx.needs_input_grad[1]:
                d_up = d_product * silu
            if ctx.needs_input_grad[0]:
                d_gate = torch.ops.aten.silu_backward(d_product * up, gate)
        return d_gate, d_up, d_weight


class _RMSNorm(torch.autograd.Function):
    """``w * (x * rsqrt(mean(x^2, -1) + eps))``, saving ``x`` and the reciprocal root.

    ``x`` comes in twice (``x_prod``, ``x_square``: the same tensor) so that its two gradient
    terms, the product's and the square's, reach the residual stream one after the other, as
    the eager graph's two nodes deliver them.
    """

    @staticmethod
    def forward(
        ctx: Any, x_prod: torch.Tensor, x_square: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        root = torch.rsqrt(x_square.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x_prod, root, weight)
        out = (x_prod * root).mul_(weight)  # (products commute: bitwise weight * (x * r))
        if _REMAKERS:
            _REMAKERS[-1].made(out, x_prod, root, weight)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, root, weight = ctx.saved_tensors
        normed = x * root
        d_weight = None
        if ctx.needs_input_grad[2]:
            d_weight = (grad * normed).sum_to_size(weight.shape)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, d_weight, None
        d_normed = grad * weight
        d_prod = d_normed * root
        d_root = (d_normed * x).sum_to_size(root.shape)
        d_var = -0.5 * d_root * root.pow(3)  # rsqrt's derivative (eps's add passes it on)
        d_square = d_var.expand(x.shape) / x.shape[-1]  # mean's
        d_x_square = d_square * (2.0 * x.pow(1.0))  # pow(2)'s, as PyTorch writes it
        return d_prod, d_x_square, d_weight, None


def _normalise(x: torch.Tensor, root: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The norm's output from its saved operands, by :class:`_RMSNorm`'s own kernels."""
    return (x * root).mul_(weight)


class _Remade:
    """A saved norm output's recipe: the norm's operands and where in its output the saved
    tensor (maybe a view) lies."""

    def __init__(self, operands: tuple[torch.Tensor, ...], view: torch.Tensor) -> None:
        self.operands = operands
        self.geometry = (tuple(view.shape), view.stride(), view.storage_offset())


class _NormRemaker:
    """The saved-tensor hooks of :func:`remade_norm_outputs`: a saved tensor that is (a view
    of) an RMSNorm output made inside the context, unchanged since, is packed as its recipe."""

    def __init__(self) -> None:
        # storage address -> (the output, weakly; its version; x, root, weight)
        self._outputs: dict[int, tuple[Any, int, tuple[torch.Tensor, ...]]] = {}

    def made(
        self, out: torch.Tensor, x: torch.Tensor, root: torch.Tensor, weight: torch.Tensor
    ) -> None:
        """Record a norm output ``out`` (contiguous, a storage of its own) and its operands."""
        if out.is_contiguous() and out.storage_offset() == 0:
            key = out.untyped_storage().data_ptr()
            self._outputs[key] = (weakref.ref(out), out._version, (x, root, weight))

    def pack(self, t: torch.Tensor) -> Any:
        if t.layout != torch.strided:
            return t
        entry = self._outputs.get(t.untyped_storage().data_ptr())
        if entry is None:
            return t
        out = entry[0]()
        # The output object alive: its storage is the one recorded (no reuse of the address).
        if out is None or out._version != entry[1] or t._version != entry[1]:
            return t
        if t.dtype != out.dtype or t.device != out.device:
            return t
        return _Remade(entry[2], t)

    @staticmethod
    def unpack(packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Remade):
            return packed
        size, stride, offset = packed.geometry
        return _normalise(*packed.operands).as_strided(size, stride, offset)


#: The active :func:`remade_norm_outputs` contexts, innermost last.
_REMAKERS: list[_NormRemaker] = []


@contextmanager
def remade_norm_outputs() -> Iterator[None]:
    """Inside, the graph keeps no lean RMSNorm's output for the backward: an operation that
    saves one (the projections after the norm save their input for their weights' gradients)
    keeps the norm's recipe instead, and the backward remakes the output from the ``x`` and the
    reciprocal root the norm saved anyway, by the norm's own kernels (the same bits). One
    ``hidden_size``-wide tensor per norm fewer (two per Llama block); each use in the backward
    costs an element-wise product. Outputs changed in place after the norm are kept as they are.
    Blocks under gradient checkpointing use their own hooks (theirs are innermost). Not for
    weights that are freed between the forward and the backward (FSDP's gathered shards): the
    recipe reads the norm's weight as it is then."""
    remaker = _NormRemaker()
    _REMAKERS.append(remaker)
    try:
        with torch.autograd.graph.saved_tensors_hooks(remaker.pack, remaker.unpack):
            yield
    finally:
        _REMAKERS.remove(remaker)
        remaker._outputs.clear()


def _lean_on(*tensors: torch.Tensor) -> bool:
    """Whether the lean form runs: gradients enabled, autocast off, every operand float32."""
    if not torch.is_grad_enabled():
        return False
    if any(t.dtype != torch.float32 for t in tensors):
        return False
    return not torch.is_autocast_enabled(tensors[0].device.type)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if not _lean_on(x):
        return getattr(self, _PLAIN)(x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not _lean_on(gate, up):
        return self.down_proj(self.act_fn(gate) * up)
    down = self.down_proj
    plain_down = type(down) is nn.Linear and down.bias is None
    if plain_down and not (down._forward_hooks or down._forward_pre_hooks):
        return _GatedDown.apply(gate, up, down.weight)
    return down(_GatedSiLU.apply(gate, up))  # (a LoRA-wrapped or biased down_proj)


def _norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if not _lean_on(x, self.weight):
        return getattr(self, _PLAIN)(x)
    return _RMSNorm.apply(x, x, self.weight, self.variance_epsilon)


def _is_gated_silu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    parts = ("gate_proj", "up_proj", "down_proj")
    return silu and all(isinstance(getattr(module, p, None), nn.Module) for p in parts)


def _is_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 1
        and isinstance(getattr(module, "variance_epsilon", None), float)
    )


def _probe_equal(module: nn.Module, lean: Any, width: int) -> bool:
    """Whether ``lean`` (bound to ``module``) gives bitwise the module's own forward on a seeded
    probe ``[2, 3, width]``, with gradients enabled (the lean branch)."""
    param = next(module.parameters())
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, width, generator=generator).to(param.device, param.dtype)
    # In eval mode (a LoRA dropout would draw) and on a forked stream: the run's random
    # numbers are the same with and without the lean forms.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            own = module.forward(probe)
            made = lean(probe)
    finally:
        for m, mode in modes:
            m.training = mode
    return bool(torch.equal(own.detach(), made.detach()))


def make_lean(model: nn.Module) -> int:
    """Install the lean forms on ``model``'s gated-SiLU MLPs and RMSNorms (each checked equal
    to the module's own forward on a probe first); returns how many modules now run them."""
    count = 0
    module: Any
    for module in model.modules():
        if hasattr(module, _PLAIN):
            count += 1
            continue
        if _is_gated_silu_mlp(module):
            lean, width = _mlp_forward, module.gate_proj.in_features
        elif _is_rms_norm(module):
            lean, width = _norm_forward, module.weight.shape[0]
        else:
            continue
        if not isinstance(width, int) or next(module.parameters()).dtype != torch.float32:
            continue
        plain = module.forward
        bound = types.MethodType(lean, module)
        setattr(module, _PLAIN, plain)
        if not _probe_equal(module, bound, width):
            delattr(module, _PLAIN)
            continue
        module.forward = bound
        count += 1
    return count


def make_plain(model: nn.Module) -> None:
    """Remove what :func:`make_lean` installed: every module runs its class's forward again."""
    for module in model.modules():
        if hasattr(module, _PLAIN):
            delattr(module, _PLAIN)
            if "forward" in vars(module):
                del module.forward


def lean_modules(model: nn.Module) -> int:
    """How many of ``model``'s modules run a lean form."""
    return sum(hasattr(m, _PLAIN) for m in model.modules())


def saved_bytes(loss: torch.Tensor, exclude: set[int]) -> int:
    """Bytes of the distinct storages the autograd graph behind ``loss`` saved for its backward,
    except those whose data pointer is in ``exclude`` (e.g. the parameters): what the lean forms
    shrink, measured by ``benchmarks/lean.py`` and the tests."""
    seen: dict[int, int] = {}
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        saved: list[Any] = []
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                saved.extend(value if isinstance(value, tuple | list) else [value])
        if hasattr(node, "saved_tensors"):
            saved.extend(node.saved_tensors)
        for t in saved:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in exclude:
                    seen[storage.data_ptr()] = storage.nbytes()
        stack.extend(nxt for nxt, _ in node.next_functions)
    return sum(seen.values())
