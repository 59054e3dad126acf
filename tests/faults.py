"""Planted faults: system providers that build the reference system and break one thing.

Each is a provider factory (`--tc-system faults:NAME` with this folder on PYTHONPATH), so the same
fault can be fed to the check functions in-process or to the whole suite through the plugin. The
numerics faults are also planters: `plant_*(system)` breaks a built system in place and returns
the undo (`benchmarks/calibrate.py` measures them on the GPU that way).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from titan_conformance.model.attention import _expand_kv
from titan_conformance.providers.grpo import GRPOSystem
from titan_conformance.providers.reference import build_system


def skipped_weight_sync(profile, **kw) -> GRPOSystem:
    """The trainer trains, the generator never hears of it."""
    system = build_system(profile, **kw)
    system.sync_weights = lambda: None
    return system


def plant_sync_skips_last_block(system):
    """Weight sync copies every trainer tensor into the generator but the last block's (a name map
    that stops one layer short): that block keeps the weights the generator had."""
    last = f"layers.{len(system.generator.model.layers) - 1}."
    params = dict(system.generator.model.named_parameters())

    def sync_weights():
        with torch.no_grad():
            for name, tensor in system.trainer.named_weights():
                if not name.startswith(last):
                    params[name].copy_(tensor)

    system.sync_weights = sync_weights
    return lambda: delattr(system, "sync_weights")


class _PackedAttention(torch.nn.Module):
    """The batch packed into one row for attention with no boundaries between sequences (a varlen
    packing that lost its cumulative sequence lengths): each sequence attends to those before it."""

    def forward(self, q, k, v, positions):
        bsz, seqlen = q.shape[:2]
        n_rep = q.shape[2] // k.shape[2]
        q, k, v = (t.reshape(1, bsz * seqlen, *t.shape[2:]).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, _expand_kv(k, n_rep), _expand_kv(v, n_rep), is_causal=True)
        return out.transpose(1, 2).reshape(bsz, seqlen, out.shape[1], -1)


def packed_trainer_attention(profile, **kw) -> GRPOSystem:
    system = build_system(profile, **kw)
    system.trainer.model.set_inner_attention(lambda _: _PackedAttention())
    return system


def recaptured(system: GRPOSystem) -> GRPOSystem:
    """The system with its generator's FULL graphs captured again, so the fault is in them too; counted
    as its startup's captures (the fault is the planted one, not a re-capture)."""
    system.generator.graphs.clear()
    system.generator.captures.clear()
    system.generator.capture()
    return system


def stale_decode_cache(profile, **kw) -> GRPOSystem:
    """Decode steps attend over the cache but leave nothing in it: each step's key/value writes are
    undone after the step (graphs recaptured so), so no later step sees an earlier decoded token."""
    system = build_system(profile, **kw)
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
    """A scratch slot that is row 0's first slot: the padded rows of a captured batch overwrite a
    real row's first key/value."""
    system = build_system(profile, **kw)
    system.generator.scratch_slot = 0
    return recaptured(system)  # a one-token step's padding slot is baked into its graph


def plant_padding_in_real_pages(system):
    """Padded rows of a replay write their keys and values at position 0 of their own cache rows
    (past the batch's real rows: pages the next, fuller batch's requests are given) instead of the
    scratch slot. The real rows' outputs stay right; only the cache shows it."""
    gen = system.generator

    def padded_slots(positions, size):
        return gen.cache_slots(torch.cat([positions, positions.new_zeros(size - positions.shape[0], 1)]))

    gen.padded_slots = padded_slots
    return lambda: delattr(gen, "padded_slots")


def plant_slots_left_by_previous_size(system):
    """The graphs' slot mappings share one buffer sized for the largest graph, and a replay refreshes
    only its real rows: a padded replay's padding rows write at the slots where the last larger
    batch's rows wrote (pages of rows this batch does not own). Unseen when sizes run in ascending
    order (no larger batch ran before), so only a shuffled probe order finds it."""
    gen = system.generator
    shared = torch.full((1, max(gen.capture_sizes)), gen.scratch_slot, dtype=torch.long, device=gen.device)

    def padded_slots(positions, size):
        shared[:, : positions.shape[0]] = gen.cache_slots(positions)
        return shared[:, :size].clone()

    gen.padded_slots = padded_slots
    return lambda: delattr(gen, "padded_slots")


def recaptured_mid_run(profile, **kw) -> GRPOSystem:
    """GRPO step 2 captures every graph again (as a cache reset or a weight sync that re-captures
    might): the steps after it replay graphs that startup never measured."""
    return _from_step(build_system(profile, **kw), 2, lambda system: system.generator.capture())


def plant_rows_not_flattened(system, decode_only: bool = False) -> None:
    """The generator feeds its blocks [B, S] rows again (only its decode steps' [B, 1] rows with
    `decode_only`), each token with its slot, instead of one flat row of tokens: a decode step's
    S = 1 is then a shape class of its own (one more compile)."""
    gen = system.generator
    real = gen.forward_step

    def forward_step(tokens, positions, slots=None):
        if decode_only and tokens.shape[1] > 1:
            return real(tokens, positions, slots)
        slots = (gen.cache_slots(positions) if slots is None else slots).view(tokens.shape)
        return gen.model(tokens, positions, cache_slots=slots)

    gen.forward_step = forward_step


def generator_rows_not_flattened(profile, **kw) -> GRPOSystem:
    """Every forward of the generator (prefill and decode) in [B, S] rows (`plant_rows_not_flattened`)."""
    system = build_system(profile, **kw)
    plant_rows_not_flattened(system)
    return system


def plant_int32_decode_slots(system) -> None:
    """The generator's decode steps hand its blocks their KV-cache slots as int32 (as a slot
    mapping built for a kernel that takes int32 might): same values, a dtype of its own."""
    gen = system.generator
    real = gen.cache_slots

    def cache_slots(positions):
        slots = real(positions)
        return slots.int() if positions.shape[1] == 1 else slots

    gen.cache_slots = cache_slots


def _from_step(system: GRPOSystem, step: int, plant) -> GRPOSystem:
    """Plants `plant(system)` as GRPO step `step` begins: startup and the steps before run clean."""
    real = system.step

    def grpo_step():
        if len(system.history) + 1 == step:
            plant(system)
        return real()

    system.step = grpo_step
    return system


def decode_new_dtype_at_step_3(profile, **kw) -> GRPOSystem:
    """From step 3 on, decode's cache slots reach the compiled blocks as int32, a dtype that
    startup never compiled (`plant_int32_decode_slots`)."""
    return _from_step(build_system(profile, **kw), 3, plant_int32_decode_slots)


def decode_new_shape_class_at_step_3(profile, **kw) -> GRPOSystem:
    """From step 3 on, decode steps reach the compiled blocks as [B, 1] rows instead of one flat row
    of B tokens: S = 1, a shape class startup never compiled (`plant_rows_not_flattened`)."""
    return _from_step(build_system(profile, **kw), 3, lambda system: plant_rows_not_flattened(system, decode_only=True))


def stale_kv_cache_after_capture(profile, **kw) -> GRPOSystem:
    """The cache is 'reset' by allocating new buffers after capture: the graphs keep reading the
    old ones, while the compiled step without a graph reads the new ones."""
    system = build_system(profile, **kw)
    for block in system.generator.model.layers:
        attn = block.self_attn.inner_attention
        attn.k_cache = torch.zeros_like(attn.k_cache)
        attn.v_cache = torch.zeros_like(attn.v_cache)
    return system


def sampler_ignores_noise(profile, **kw) -> GRPOSystem:
    """A decode step whose sampler drops the Gumbel noise (greedy whatever the temperature), captured
    in every graph: every mode agrees, only the sampler's own output gives it away."""
    system = build_system(profile, **kw)
    gen = system.generator

    def greedy_step(tokens, positions, noise, divisor, noise_scale, *knobs):
        return type(gen).decode_step(gen, tokens, positions, noise, divisor, noise_scale * 0, *knobs)

    gen.decode_step = greedy_step
    return recaptured(system)


def capture_size_left_out(profile, **kw) -> GRPOSystem:
    system = build_system(profile, **kw)
    left_out = system.generator.capture_sizes[len(system.generator.capture_sizes) // 2]
    system.generator.capture_sizes.remove(left_out)
    del system.generator.graphs[left_out]
    return system


# --- planted faults on torchtitan's path (`--tc-system faults:torchtitan_...`) -------------------


def torchtitan_rope_mismatch(profile, **kw):
    """The generator's torchtitan blocks rotate with twice the trainer's RoPE theta."""
    from titan_conformance.providers.torchtitan import build_system as torchtitan_system

    system = torchtitan_system(profile, **kw)
    scale_generator_rope_theta(system, 2.0)
    return system


def scale_generator_rope_theta(system, factor: float):
    """Rebuilds every generator block's RoPE table (torchtitan's own RoPE module) with theta x
    factor, in place: the table is a buffer the compiled blocks read, so nothing recompiles. Returns
    the undo (the tables as they were: the module's config keeps the original theta)."""
    import dataclasses

    ropes = [block.attention.rope for block in system.generator.model.layers.values()]
    saved = [rope.cache.clone() for rope in ropes]
    for rope in ropes:
        other = type(rope)(dataclasses.replace(rope.config, theta=rope.config.theta * factor))
        other.init_states(buffer_device=rope.cache.device)
        rope.cache.copy_(other.cache)

    def undo():
        for rope, cache in zip(ropes, saved):
            rope.cache.copy_(cache)

    return undo


def torchtitan_generator_compiled_differently(profile, **kw):
    """torchtitan's apply_compile runs for the generator with another backend than the trainer's."""
    import dataclasses

    import titan_conformance.providers.torchtitan.stack as tt_stack
    from titan_conformance.providers.torchtitan import build_system as torchtitan_system

    real = tt_stack.compile_blocks

    def compile_blocks(api, model, config, ledger, role, dims=None):
        if role == "generator":
            config = dataclasses.replace(config, backend="aot_eager" if config.backend != "aot_eager" else "inductor")
        return real(api, model, config, ledger, role, dims)

    tt_stack.compile_blocks = compile_blocks
    try:
        return torchtitan_system(profile, **kw)
    finally:
        tt_stack.compile_blocks = real


def torchtitan_generator_without_attention_all_reduce(profile, **kw):
    """The generator's attention output projection takes a local fast path (as a PR might, to
    save a collective per layer in decode): each rank's `wo` multiplies its heads' share and
    declares the partial sum replicated, so the all-reduce torchtitan's plan puts after `wo` is
    gone. The trainer keeps the plan."""
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor, Replicate

    import titan_conformance.providers.torchtitan.stack as tt_stack
    from titan_conformance.providers.torchtitan import build_system as torchtitan_system

    real = tt_stack.build_generator_model

    def local_wo(wo):
        def forward(x):
            w = wo.weight
            partial = F.linear(x.to_local(), w.to_local())
            return DTensor.from_local(partial, w.device_mesh, [Replicate()], run_check=False)
        return forward

    def build_generator_model(*args, **kwargs):
        model = real(*args, **kwargs)
        for block in model.layers.values():
            block.attention.wo.forward = local_wo(block.attention.wo)
        return model

    tt_stack.build_generator_model = build_generator_model
    try:
        return torchtitan_system(profile, **kw)
    finally:
        tt_stack.build_generator_model = real


def torchtitan_policy_without_max_num_seqs(profile, **kw):
    """torchtitan's capture-size policy, changed (as a PR might) to powers of 2 only: the step's
    batch of max_num_seqs sequences has no graph of its own."""
    import titan_conformance.providers.torchtitan.capture_policy as policy

    real = policy._sizes

    def powers_of_two_only(policy_class, mode, max_num_seqs):
        return [s for s in real(policy_class, mode, max_num_seqs) if s & (s - 1) == 0]

    policy._sizes = powers_of_two_only
    try:
        from titan_conformance.providers.torchtitan import build_system as torchtitan_system

        return torchtitan_system(profile, **kw)
    finally:
        policy._sizes = real


# --- numerics a parity check must see: subtle generator mismatches, temperature, NaN ----------


def _recapture_graphs(system) -> None:
    """A decode graph bakes in Python floats (RoPE base, norm eps) at capture: capture again."""
    if system.generator.graphs:
        recaptured(system)


def plant_rope_theta(system, factor: float):
    """The generator's RoPE base `factor` x the trainer's."""
    model = system.generator.model
    args = model.args
    model.args = args.replace(rope_theta=args.rope_theta * factor)
    _recapture_graphs(system)

    def undo():
        model.args = args
        _recapture_graphs(system)

    return undo


def plant_norm_eps(system, eps: float = 1e-5):
    """Every RMSNorm of the generator with `eps` (the checkpoints here say 1e-6)."""
    norms = [m for m in system.generator.model.modules() if hasattr(m, "eps")]
    before = [m.eps for m in norms]
    for m in norms:
        m.eps = eps
    _recapture_graphs(system)

    def undo():
        for m, value in zip(norms, before):
            m.eps = value
        _recapture_graphs(system)

    return undo


def plant_untempered_generator(system):
    """The generator samples at the temperature but reports each token's logprob under the
    untempered distribution (logits not divided by T)."""
    gen = system.generator
    real = gen.generate

    def generate(prompts, n, max_tokens, sampling, seed, eos_id, **kw):
        completions = real(prompts, n, max_tokens, sampling, seed, eos_id, **kw)
        for c, logprobs in zip(completions, gen.score(completions, dataclasses.replace(sampling, temperature=1.0))):
            c.logprobs = logprobs.tolist()
        return completions

    gen.generate = generate
    return lambda: delattr(gen, "generate")


def plant_untempered_trainer(system):
    """The trainer scores (and trains on) logprobs at temperature 1 whatever the sampling temperature."""
    return plant_trainer_sampling(system, temperature=1.0)


def plant_trainer_sampling(system, **changes):
    """The trainer scores (and trains on) logprobs with `changes` to the profile's sampling spec
    (`logprobs="raw"`: the full tempered softmax where the generator reports processed ones)."""
    before = system.trainer.sampling
    system.trainer.sampling = dataclasses.replace(before, **changes)
    return lambda: setattr(system.trainer, "sampling", before)


def plant_generator_sampling(system, **changes):
    """The generator samples and reports logprobs with `changes` to the spec it is asked for, its
    decode step built (and graphs captured) so: `logprobs="raw"` where the profile declares
    processed, or a top_p the profile does not declare (vLLM's processed_logprobs then renormalize
    over what it kept)."""
    gen = system.generator
    config, real = gen.config, gen.generate
    gen.config = dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, **changes))
    gen.generate = lambda prompts, n, max_tokens, sampling, *args, **kw: real(
        prompts, n, max_tokens, dataclasses.replace(sampling, **changes), *args, **kw)
    _recapture_graphs(system)

    def undo():
        gen.config = config
        del gen.generate
        _recapture_graphs(system)

    return undo


def plant_slow_generate(system):
    """Every rollout takes 5x as long: a host-side stall after the decode loop (4x its own time)."""
    import time

    real = system.rollout

    def rollout(*args, **kwargs):
        start = time.perf_counter()
        out = real(*args, **kwargs)
        time.sleep(4 * (time.perf_counter() - start))
        return out

    system.rollout = rollout
    return lambda: delattr(system, "rollout")


def _plant_logits(system, change):
    """The generator's logits [B, S, V] of every prefill and decode step passed through `change`
    (eager: a compiled step's graph has no Python to patch; CPU: no graph to recapture)."""
    gen = system.generator
    gen.forward_step = lambda tokens, positions, slots=None: change(type(gen).forward_step(gen, tokens, positions, slots))
    return lambda: delattr(gen, "forward_step")


def plant_rows_mixed(system, scale: float = 1e-4):
    """A reduction that runs over the batch's rows as well as a row's own (a norm or a split-K
    partial sum over the flattened batch): every row's logits get `scale` x the batch's mean logits,
    so a sequence's logprobs follow its neighbours. The same batch twice gives the same numbers."""
    return _plant_logits(system, lambda logits: logits + scale * logits.mean(0, keepdim=True))


def plant_split_k_by_batch(system, below: int = 64):
    """lm_head split along its reduction (hidden) dim in two halves for batches below `below` rows
    (split-K to fill the machine at small batch, as GEMM heuristics do): the same numbers up to fp32
    rounding, which only a bitwise (batch-invariant) profile can see."""
    model, real = system.generator.model, system.generator.model.logits

    def logits(hidden):
        if hidden.shape[1] >= below:  # the generator's blocks see one flat row of tokens
            return real(hidden)
        half = hidden.shape[-1] // 2
        weight = model.lm_head.weight if model.lm_head is not None else model.embed_tokens.weight
        return F.linear(hidden[..., :half], weight[:, :half]) + F.linear(hidden[..., half:], weight[:, half:])

    model.logits = logits
    return lambda: delattr(model, "logits")


def plant_step_counter(system, scale: float = 1e-4):
    """Logits scaled by 1 + `scale` x frac(0.618 x calls), with calls the generator's forward
    calls so far (a kernel whose split, workspace or algorithm follows a step counter): a
    repeated rollout sees other counter values than the first."""
    calls = [0]

    def change(logits):
        calls[0] += 1
        return logits * (1 + scale * ((0.618 * calls[0]) % 1.0))

    return _plant_logits(system, change)


def _planted(plant, *args, **changes):
    def factory(profile, **kw) -> GRPOSystem:
        system = build_system(profile, **kw)
        plant(system, *args, **changes)
        return system

    factory.__doc__ = plant.__doc__
    return factory


wrong_rope_theta = _planted(plant_rope_theta, 2.0)
generator_rope_theta_one_percent_off = _planted(plant_rope_theta, 1.01)
generator_norm_eps = _planted(plant_norm_eps)
untempered_generator_logprobs = _planted(plant_untempered_generator)
untempered_trainer = _planted(plant_untempered_trainer)
weight_sync_skips_last_block = _planted(plant_sync_skips_last_block)
# top-p/top-k and the logprobs each side reports (run on a profile with top_p < 1 and processed
# logprobs, the last on one with top_p = 1):
trainer_scores_raw = _planted(plant_trainer_sampling, logprobs="raw")
generator_reports_raw = _planted(plant_generator_sampling, logprobs="raw")
generator_truncates_top_p = _planted(plant_generator_sampling, top_p=0.95, logprobs="processed")
slow_generate = _planted(plant_slow_generate)
generator_mixes_rows = _planted(plant_rows_mixed)
generator_split_k_by_batch = _planted(plant_split_k_by_batch)
generator_step_counter = _planted(plant_step_counter)
padding_in_real_pages = _planted(plant_padding_in_real_pages)
slots_left_by_previous_size = _planted(plant_slots_left_by_previous_size)


def nan_reward(profile, **kw) -> GRPOSystem:
    """Every 50th reward is NaN (a verifier that divides by zero on some answers)."""
    system = build_system(profile, **kw)
    real, calls = system.task.reward, [0]

    def reward(problem, completion_ids):
        calls[0] += 1
        r = real(problem, completion_ids)
        return type(r)(float("nan"), r.format) if calls[0] % 50 == 0 else r

    system.task.reward = reward
    return system


# --- how the system runs: compile settings, eager fallbacks, speed -----------------------------


def generator_compiled_with_other_options(profile, **kw) -> GRPOSystem:
    """The generator's blocks compiled with an Inductor option the trainer's are not (as a PR that
    tunes only the generator's compile might): other kernels, other rounding."""
    import dataclasses

    import titan_conformance.generator.qwen3 as qwen3

    real = qwen3.apply_regional_compile

    def compile_generator(model, config, ledger, role):
        if role == "generator":
            config = dataclasses.replace(config, options={"max_autotune_pointwise": True})
        return real(model, config, ledger, role)

    qwen3.apply_regional_compile = compile_generator
    try:
        return build_system(profile, **kw)
    finally:
        qwen3.apply_regional_compile = real


def eager_generator(profile, **kw) -> GRPOSystem:
    """The generator's compiled blocks are bypassed after startup (a force_eager stance around
    generation, as a debugging change left in might): every compile count stays clean."""
    system = build_system(profile, **kw)
    real = system.generator.generate

    def generate(*args, **kwargs):
        with torch.compiler.set_stance("force_eager"):
            return real(*args, **kwargs)

    system.generator.generate = generate
    return system


def graphs_never_replayed(profile, **kw) -> GRPOSystem:
    """Graphs are captured (and pass every probe) but the decode loop never replays them."""
    system = build_system(profile, **kw)
    gen = system.generator
    real = gen.run_decode
    gen.run_decode = lambda *args, use_graph=True, want_all=False: real(*args, use_graph=False, want_all=want_all)
    return system
