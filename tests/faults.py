"""Planted faults: system providers that build the reference system and break one thing.

Each is a provider factory (`--tc-system faults:NAME` with this folder on PYTHONPATH), so the same
fault can be fed to the check functions in-process or to the whole suite through the plugin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_conformance.model.attention import _expand_kv
from titan_conformance.system.grpo_system import GRPOSystem


def wrong_rope_theta(profile, **kw) -> GRPOSystem:
    """The generator builds RoPE with another base than the trainer."""
    system = GRPOSystem(profile, **kw)
    args = system.generator.model.args
    system.generator.model.args = args.replace(rope_theta=args.rope_theta * 2)
    return system


def skipped_weight_sync(profile, **kw) -> GRPOSystem:
    """The trainer trains, the generator never hears of it."""
    system = GRPOSystem(profile, **kw)
    system.sync_weights = lambda: None
    return system


class _BidirectionalAttention(torch.nn.Module):
    """Attention without the causal mask: a token sees the padding after it."""

    def forward(self, q, k, v, positions):
        n_rep = q.shape[2] // k.shape[2]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, _expand_kv(k, n_rep), _expand_kv(v, n_rep)).transpose(1, 2)


def non_causal_trainer(profile, **kw) -> GRPOSystem:
    system = GRPOSystem(profile, **kw)
    system.trainer.model.set_inner_attention(lambda _: _BidirectionalAttention())
    return system


def recaptured(system: GRPOSystem) -> GRPOSystem:
    """The system with its generator's FULL graphs captured again, so the fault is in them too."""
    system.generator.graphs.clear()
    system.generator.capture()
    return system


def stale_decode_cache(profile, **kw) -> GRPOSystem:
    """Decode steps attend over the cache but leave nothing in it: each step's key/value writes are
    undone after the step (graphs recaptured so), so no later step sees an earlier decoded token."""
    system = GRPOSystem(profile, **kw)
    gen = system.generator
    caches = [block.self_attn.inner_attention for block in gen.model.layers]

    def forgetful_step(*args):
        saved = [(c.k_cache.clone(), c.v_cache.clone()) for c in caches]
        out = type(gen).decode_step(gen, *args)
        for cache, (k, v) in zip(caches, saved):
            cache.k_cache.copy_(k)
            cache.v_cache.copy_(v)
        return out

    gen.decode_step = forgetful_step
    return recaptured(system)


def padding_leaks_into_real_rows(profile, **kw) -> GRPOSystem:
    """A decode slot mapping that sends padding rows (the only decode tokens at position 0) to row
    0's first slot: the padded rows of a captured batch overwrite a real row's first key/value."""
    system = GRPOSystem(profile, **kw)
    gen = system.generator

    def leaky_slots(positions):
        slots = type(gen).cache_slots(gen, positions)
        if positions.shape[1] > 1:  # a prefill: its position-0 tokens are real
            return slots
        return torch.where(positions.reshape(1, -1) == 0, torch.zeros_like(slots), slots)

    gen.cache_slots = leaky_slots
    return recaptured(system)


def generator_rows_not_flattened(profile, **kw) -> GRPOSystem:
    """The generator feeds its blocks [B, S] rows again, each token with its slot, instead of one
    flat row of tokens: a decode step's S = 1 is then a shape class of its own (one more compile)."""
    system = GRPOSystem(profile, **kw)
    gen = system.generator

    def forward_step(tokens, positions):
        slots = gen.cache_slots(positions).view(tokens.shape)
        return gen.model(tokens, positions, cache_slots=slots)

    gen.forward_step = forward_step
    return system


def stale_kv_cache_after_capture(profile, **kw) -> GRPOSystem:
    """The cache is 'reset' by allocating new buffers after capture: the graphs keep reading the
    old ones, while the compiled step without a graph reads the new ones."""
    system = GRPOSystem(profile, **kw)
    for block in system.generator.model.layers:
        attn = block.self_attn.inner_attention
        attn.k_cache = torch.zeros_like(attn.k_cache)
        attn.v_cache = torch.zeros_like(attn.v_cache)
    return system


def sampler_ignores_noise(profile, **kw) -> GRPOSystem:
    """A decode step whose sampler drops the Gumbel noise (greedy whatever the temperature), captured
    in every graph: every mode agrees, only the sampler's own output gives it away."""
    system = GRPOSystem(profile, **kw)
    gen = system.generator

    def greedy_step(tokens, positions, noise, divisor, noise_scale):
        return type(gen).decode_step(gen, tokens, positions, noise, divisor, noise_scale * 0)

    gen.decode_step = greedy_step
    return recaptured(system)


def capture_size_left_out(profile, **kw) -> GRPOSystem:
    system = GRPOSystem(profile, **kw)
    left_out = system.generator.capture_sizes[len(system.generator.capture_sizes) // 2]
    system.generator.capture_sizes.remove(left_out)
    del system.generator.graphs[left_out]
    return system


# --- planted faults on torchtitan's path (`--tc-system faults:torchtitan_...`) -------------------


def torchtitan_rope_mismatch(profile, **kw):
    """The generator's torchtitan blocks rotate with twice the trainer's RoPE theta."""
    from titan_conformance.torchtitan_system.system import TorchtitanSystem

    system = TorchtitanSystem(profile, **kw)
    scale_generator_rope_theta(system, 2.0)
    return system


def scale_generator_rope_theta(system, factor: float) -> None:
    """Rebuilds every generator block's RoPE table (torchtitan's own RoPE module) with theta x
    factor, in place: the table is a buffer the compiled blocks read, so nothing recompiles."""
    import dataclasses

    for block in system.generator.model.layers.values():
        rope = block.attention.rope
        other = type(rope)(dataclasses.replace(rope.config, theta=rope.config.theta * factor))
        other.init_states(buffer_device=rope.cache.device)
        rope.cache.copy_(other.cache)


def torchtitan_generator_compiled_differently(profile, **kw):
    """torchtitan's apply_compile runs for the generator with another backend than the trainer's."""
    import dataclasses

    import titan_conformance.torchtitan_system.system as tt_system

    real = tt_system.compile_blocks

    def compile_blocks(api, model, config, ledger, role):
        if role == "generator":
            config = dataclasses.replace(config, backend="aot_eager" if config.backend != "aot_eager" else "inductor")
        return real(api, model, config, ledger, role)

    tt_system.compile_blocks = compile_blocks
    try:
        return tt_system.TorchtitanSystem(profile, **kw)
    finally:
        tt_system.compile_blocks = real


def torchtitan_policy_without_max_num_seqs(profile, **kw):
    """torchtitan's capture-size policy, changed (as a PR might) to powers of 2 only: the step's
    batch of max_num_seqs sequences has no graph of its own."""
    import titan_conformance.torchtitan_system.capture_policy as policy

    real = policy._sizes

    def powers_of_two_only(policy_class, mode, max_num_seqs):
        return [s for s in real(policy_class, mode, max_num_seqs) if s & (s - 1) == 0]

    policy._sizes = powers_of_two_only
    try:
        from titan_conformance.torchtitan_system.system import TorchtitanSystem

        return TorchtitanSystem(profile, **kw)
    finally:
        policy._sizes = real
