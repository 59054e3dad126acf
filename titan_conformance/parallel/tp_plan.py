"""Tensor-parallel plans for the shared Qwen3 model (torchtitan's style, without sequence parallel).

Attention and MLP are Megatron-sharded with DTensor: q/k/v and gate/up are ColwiseParallel (each
rank holds n_heads/tp query heads, n_kv_heads/tp key/value heads and hidden_dim/tp MLP columns, and
the block's `.view(bsz, seqlen, -1, head_dim)` sees the local head count), o_proj and down_proj are
RowwiseParallel (partial sums all-reduced back to a replicated activation). The token embedding is
RowwiseParallel over the vocabulary with a replicated input, and lm_head ColwiseParallel over the
vocabulary with a replicated output, as torchtitan shards them; torchtitan instead keeps the
embedding's output sharded on the sequence (sequence parallel, with SequenceParallel norms) and the
logits sharded on the vocabulary (loss parallel). We replicate both: the blocks take the same plain
activations at every TP degree, and every rank holds full logits for logprobs and sampling. Norm
weights stay plain replicated tensors, identical on every rank. The block norms and the final norm
act on replicated activations, so their gradients arrive complete (the backward of Colwise's
replicated input all-reduces). q_norm and k_norm act on each rank's own heads, so their gradients
are partial sums: a gradient hook all-reduces them (torchtitan makes them SequenceParallel on the
head dim for the same reason). Without it the ranks' q_norm/k_norm weights drift apart.

Every RowwiseParallel output (embedding, o_proj, down_proj) comes back from DTensor's `to_local()`
as an `AsyncCollectiveTensor` -- the seed case of the recompile check: a compiled block whose input
is an AsyncCollectiveTensor on some calls and a plain Tensor on others compiles once per type.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from titan_conformance.errors import ConformanceError
from titan_conformance.model.qwen3 import Qwen3Model

BLOCK_PLAN = {
    "self_attn.q_proj": ColwiseParallel(),
    "self_attn.k_proj": ColwiseParallel(),
    "self_attn.v_proj": ColwiseParallel(),
    "self_attn.o_proj": RowwiseParallel(),
    "mlp.gate_proj": ColwiseParallel(),
    "mlp.up_proj": ColwiseParallel(),
    "mlp.down_proj": RowwiseParallel(),
}


def tp_mesh(world_size: int | None = None) -> DeviceMesh:
    """A 1-D mesh named `tp` over the current process group (CPU with gloo, else CUDA)."""
    world_size = world_size or torch.distributed.get_world_size()
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device, (world_size,), mesh_dim_names=("tp",))


def apply_tp(model: Qwen3Model, mesh: DeviceMesh) -> Qwen3Model:
    """Shards `model` in place over the 1-D `mesh`. Load (or initialize) the full weights first,
    identically on every rank: each parameter is split from the full tensor. Returns the model."""
    args, tp = model.args, mesh.size()
    if args.n_heads % tp or args.n_kv_heads % tp or args.hidden_dim % tp or args.vocab_size % tp:
        raise ConformanceError(
            f"TP degree {tp} must divide num_attention_heads={args.n_heads}, num_key_value_heads="
            f"{args.n_kv_heads}, intermediate_size={args.hidden_dim} and vocab_size={args.vocab_size}."
        )
    frozen = not any(p.requires_grad for p in model.parameters())
    if model.lm_head is None:  # tied: an lm_head module that shares the embedding's weight
        model.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False, device=model.embed_tokens.weight.device)
        del model.lm_head.weight
        model.lm_head.weight = model.embed_tokens.weight
    parallelize_module(
        model,
        mesh,
        {
            "embed_tokens": RowwiseParallel(input_layouts=Replicate()),
            "lm_head": ColwiseParallel(output_layouts=Replicate()),
        },
    )
    if args.tie_word_embeddings:  # both shard the vocabulary (dim 0) over the mesh: one parameter
        model.lm_head.weight = model.embed_tokens.weight
    for block in model.layers:
        linears = [block.get_submodule(name) for name in BLOCK_PLAN]
        for linear in linears:  # before the parallel style's hooks: the flatten runs first
            flatten_input(linear)
        parallelize_module(block, mesh, BLOCK_PLAN)
        for linear in linears:  # after them: the unflatten runs last
            unflatten_output(linear)
        for norm in (block.self_attn.q_norm, block.self_attn.k_norm):
            if norm.weight.requires_grad:  # a frozen model (generator, reference) has no gradients
                norm.weight.register_hook(functools.partial(_sum_over_ranks, mesh.get_group()))
    if frozen:  # parallel styles make new Parameters, which require grad
        model.requires_grad_(False)
    model.tp_mesh = mesh
    return model


def _sum_over_ranks(group, grad: torch.Tensor) -> torch.Tensor:
    return funcol.wait_tensor(funcol.all_reduce(grad, "sum", group))


def _flatten(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    module._tc_leading_shape = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]), *args[1:])


def _unflatten(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.view(*module._tc_leading_shape, out.shape[-1])


def flatten_input(linear: nn.Module) -> None:
    """Feeds the parallel style a 2-D [tokens, features] input; `unflatten_output` restores
    [B, S, features] after it, so DTensor only ever sees 2-D activations. Register this BEFORE
    `parallelize_module` and `unflatten_output` after it: hook order is registration order.

    Why 2-D: with dynamic batch AND sequence dims, AOTAutograd's backward trace of a DTensor linear
    on a 3-D input (its [B, S, D] -> [B*S, D] view) recurses without end (RecursionError in
    proxy_tensor's `_compute_proxy`; torch 2.13 CPU; seen with aot_eager, and Inductor shares that
    AOTAutograd trace). The 2-D form compiles fwd+bwd once for every (B, S). The leading shape
    rides on the module between the two hooks; Dynamo traces that as an ordinary attribute write
    within the compiled block.

    Why not `register_forward_pre_hook(..., prepend=True)` after parallelizing: prepend reorders
    the hooks OrderedDict with `move_to_end`, which leaves the plain dict's insertion order behind.
    Dynamo names a traced hook `hooks[list(dict.keys(hooks))[i]]` with i its position in the
    OrderedDict's order, so that guard resolves to the other hook; on torch 2.11 (CUDA) building
    the block's guards then failed: `InternalTorchDynamoError: TypeError: 'NoneType' object is not
    subscriptable` for `..._forward_pre_hooks[list(dict.keys(...))[1]].__closure__[0].cell_contents`
    (the style's lambda is hook 1 in the OrderedDict, our closure-less `_flatten` in the dict).
    """
    linear.register_forward_pre_hook(_flatten)


def unflatten_output(linear: nn.Module) -> None:
    """Restores the [B, S] leading shape that `flatten_input` took off (register after
    `parallelize_module`, so it runs after the style's output hook)."""
    linear.register_forward_hook(_unflatten)


def hooks_in_dict_order(module: nn.Module) -> bool:
    """Whether `module`'s hook dicts iterate in insertion order (no `prepend`): the order Dynamo's
    guards assume (see `flatten_input`)."""
    return all(
        list(dict.keys(hooks)) == list(hooks.keys())
        for hooks in (module._forward_pre_hooks, module._forward_hooks)
    )


def gathered(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full tensor (a collective: every rank calls it); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered to its full tensor (on every rank)."""
    return {n: gathered(p).detach().clone() for n, p in model.named_parameters()}
