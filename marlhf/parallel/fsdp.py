"""Fully sharded data parallelism for the update (``torch.distributed.fsdp.fully_shard``).

With ``fsdp=True`` each rank keeps only its shard of every parameter, gradient and optimizer
moment during the update: each transformer block is gathered for its forward and again for its
backward, and its gradients are reduce-scattered (summed: marlhf weights each rank's loss by its
part of the global normaliser, so the ranks' gradients add up to one process's). Between updates
the policy's weights are gathered once, and sampling, scoring, baselines, audits and saving run
on whole weights with no collective, as hybrid RLHF engines hand whole weights to their
inference engine; a separate frozen reference stays sharded (its scoring forward gathers block
by block). So one device must hold the policy's weights and the sampling cache, but not the
gradients, the two Adam moments (with the weights, usually three quarters of a full
fine-tune's state) or the reference.

Every rank calls the update together and makes the same number of forward and backward calls
in it (a rank without rows in a micro-batch runs one of its rows at weight 0), since each call
gathers parameters collectively. Checkpoints hold whole weights (``save_pretrained`` of an
unsharded twin that shares the gathered tensors) and the whole optimizer state; loading shards
them again on the same number of ranks.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any, Protocol, cast

import torch
from torch import nn

from marlhf.models import transformer_blocks
from marlhf.parallel import distributed as dist_utils


class PolicyParts(Protocol):
    """The models that sharding reads of a policy module (a
    :class:`~marlhf.policy.actor_critic.CausalLMActorCritic`: the policy layer sits above this
    one, docs/design.md, "Layout"), and the attribute it keeps the sharded state in."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def critic(self) -> nn.Module | None: ...

    @property
    def ref_model(self) -> nn.Module | None: ...

    @property
    def value_head(self) -> nn.Module: ...

    fsdp: Any


def _fsdp_api() -> tuple[Any, Any, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return init_device_mesh, FSDPModule, fully_shard


def _meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters live on the meta device (no memory); buffers are
    copied as they are (small: rotary frequencies, masks). Tied parameters stay tied."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    return copy.deepcopy(module, memo)


class ShardedPolicy:
    """The FSDP state of one :class:`~marlhf.policy.actor_critic.CausalLMActorCritic`.

    Built by :func:`shard_policy`; the policy keeps it as ``policy.fsdp``. Between updates the
    policy's own units (LM, critic, value head) are gathered; a separate frozen reference
    (``reference="copy"`` or a model) stays sharded and runs its forward sharded, block by
    block, in the rollout's scoring, where every rank scores the same number of chunks.
    """

    def __init__(self, policy: nn.Module, template: nn.Module) -> None:
        self.policy = policy
        self.parts = cast(PolicyParts, policy)
        self.template = template
        self.gathered = False

    def units(self, reference: bool = False) -> list[Any]:
        """The FSDP units of the policy's own models (``reference=True``: the reference's)."""
        _, FSDPModule, _ = _fsdp_api()
        ref = self.parts.ref_model
        ref_ids = set() if ref is None else {id(m) for m in ref.modules()}
        return [
            m
            for m in self.policy.modules()
            if isinstance(m, FSDPModule) and (id(m) in ref_ids) == reference
        ]

    def gather(self) -> None:
        """All-gather the policy's units and keep them whole (a collective: every rank)."""
        if self.gathered:
            return
        for unit in self.units():
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        self.gathered = True

    def release(self) -> None:
        """Free the whole weights: each rank keeps its shards (local, no collective)."""
        if not self.gathered:
            return
        for unit in self.units():
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
        self.gathered = False

    def reference_done(self) -> None:
        """Reshard the reference after a forward (FSDP keeps a root's weights whole after its
        forward, for a backward that a frozen reference never has; local)."""
        for unit in self.units(reference=True):
            unit.reshard()

    @contextlib.contextmanager
    def whole_reference(self) -> Iterator[None]:
        """The reference's weights gathered whole inside the block (to save it; a collective:
        every rank)."""
        for unit in self.units(reference=True):
            unit.unshard()
        try:
            yield
        finally:
            self.reference_done()

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        """The sharded phase of an update; the weights are gathered again after it.

        Every rank makes the same forward calls (the policy pads its length groups to the
        ranks' most, :meth:`~marlhf.policy.actor_critic.CausalLMActorCritic._forward`). After an
        error that every rank raised together (a non-finite loss:
        :func:`~marlhf.parallel.distributed.raise_together`) the weights are gathered too, so
        the model can still be inspected and saved; after any other error they stay sharded:
        gathering is a collective, and a rank that raised alone would start it while the
        others wait in another.
        """
        self.release()
        try:
            yield
        except BaseException as exc:
            if getattr(exc, "raised_together", False) or not dist_utils.world().distributed:
                self.gather()
            raise
        self.gather()

    def twin(self, reference: bool = True) -> nn.Module:
        """An unsharded copy of the policy over the gathered weights (no copy of them; local:
        rank 0 saves from it alone). ``reference=False``: without the reference's weights (its
        parameters stay on the meta device), for what uses the LM alone."""
        if not self.gathered:
            raise RuntimeError("FSDP: the weights are sharded (inside an update); save after it")
        from torch.distributed.tensor import DTensor

        live = dict(self.policy.named_parameters())
        memo: dict[int, Any] = {}
        for name, p in self.template.named_parameters():
            if isinstance(live[name], DTensor):  # a reference unit, not gathered
                if reference:
                    raise RuntimeError(
                        "FSDP: the reference model is sharded; save with the algorithm's "
                        "save() on every rank (it gathers the reference), or inside `with "
                        "policy.fsdp.whole_reference():` entered on every rank"
                    )
                continue
            memo[id(p)] = live[name]
        return copy.deepcopy(self.template, memo)


def shard_policy(policy: nn.Module, device: torch.device) -> ShardedPolicy:
    """Shard ``policy``'s models (blocks, then each model as a whole) and value head over every
    rank of the initialised process group; returns the state with the weights gathered.

    :raises ValueError: without an initialised process group.
    """
    if not dist_utils.initialized():
        raise ValueError(
            "fsdp=True needs torch.distributed: launch with torchrun --nproc-per-node N (one "
            "process has nothing to shard; use fsdp=False)"
        )
    init_device_mesh, FSDPModule, fully_shard = _fsdp_api()
    # FSDP warns on every unit that returns a view (logits cut to the response positions, the
    # value head's output): an in-place change of it would skip a gather. marlhf changes no
    # model output in place (masking and scaling make new tensors), so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view")
    template = _meta_copy(policy)
    world = dist_utils.world()
    mesh = init_device_mesh(device.type, (world.world_size,))
    parts = cast(PolicyParts, policy)
    for part in (parts.model, parts.critic, parts.ref_model):
        if part is None:
            continue
        for block in transformer_blocks(part):
            fully_shard(block, mesh=mesh)
        fully_shard(part, mesh=mesh)
    fully_shard(parts.value_head, mesh=mesh)
    for unit in policy.modules():
        if isinstance(unit, FSDPModule):
            # Sum the ranks' gradients (FSDP's default divides by the world size), with a plain
            # sum (gloo has no pre-multiplied sum).
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    state = ShardedPolicy(policy, template)
    parts.fsdp = state
    return state


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; ``tensor`` itself otherwise."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (a collective: every rank calls it); ``tensor`` otherwise."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's ``state_dict`` with every sharded moment gathered whole, as one process
    would save it (a collective: every rank calls it, in the same parameter order)."""
    state = optimizer.state_dict()  # (its per-parameter dicts are the live ones: not changed)
    state["state"] = {
        index: {
            key: whole(value).detach().cpu() if isinstance(value, torch.Tensor) else value
            for key, value in slot.items()
        }
        for index, slot in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state saved by :func:`optimizer_state`, each moment cut to this rank's shard of
    its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            slot = optimizer.state.get(p, {})
            for key, value in list(slot.items()):
                # The moments (the shape of the parameter), not Adam's scalar step count.
                if not isinstance(value, DTensor) and tuple(value.shape) == tuple(p.shape):
                    slot[key] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
