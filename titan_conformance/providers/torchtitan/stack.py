"""The torchtitan model stack (`--tc-system torchtitan`), composed into the shared GRPO system.

Trainer: the flavor's model from torchtitan's registry, built and initialized (or loaded through
its HF state-dict adapter) as torchtitan does, compiled by torchtitan's `apply_compile`, trained
with torchtitan's `compute_logprobs` and `GRPOLoss`. Generator: the same model class and weights
with our KV cache as inner attention, compiled by the same `apply_compile` under the same config,
capturing FULL decode graphs at the sizes torchtitan's own capture-size policy yields. At
parallel.tp > 1 both are sharded by torchtitan's own TP plan for Qwen3 (`parallelize_qwen3` over
the sharding configs its `update_from_config` fills in), on each rank of the process group.
"""

from __future__ import annotations

from pathlib import Path

import torch

from titan_conformance.errors import ConformanceError
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.native import NativeGenerator
from titan_conformance.providers.activations import ProbeSites
from titan_conformance.providers.grpo import BuildContext
from titan_conformance.providers.torchtitan import DEFAULT_SUITE
from titan_conformance.providers.torchtitan.capture_policy import torchtitan_capture_policy
from titan_conformance.providers.torchtitan.compat import load_torchtitan
from titan_conformance.parallel.launch import require_process_group
from titan_conformance.parallel.tp_plan import full_state_dict, gathered
from titan_conformance.parallel.unwrap import unwrap_async_output
from titan_conformance.providers.torchtitan.models import (
    attach_tp_plan, build_generator_model, build_model, compile_blocks, flavor_spec,
    load_hf_checkpoint, parallelize, tp_dims,
)
from titan_conformance.providers.torchtitan.trainer import TorchtitanTrainer
from titan_conformance.providers.torchtitan.vllm_path import CUDA_ONLY, vllm_registration_status
from titan_conformance.task.sort_letters import VOCAB_SIZE
from titan_conformance.trainer import Trainer
from titan_conformance.profile import SamplingSpec
from titan_conformance.trainer.logprobs import scoring_logits


def check_profile(p) -> None:
    """What the torchtitan provider can build, said before anything is built."""
    where = f"profile {p.name!r}"
    problems = [
        (not p.torchtitan.flavor, f"it sets no torchtitan.flavor; run --tc-suite {DEFAULT_SUITE} or add "
         "[torchtitan] flavor = \"debugmodel\" (or another Qwen3 flavor)"),
        (p.parallel.tp > 1 and p.generator.backend != "native", "parallel.tp > 1 runs the native generator only"),
        (p.grpo.kl_coef > 0, "torchtitan's GRPOLoss has no KL term; set grpo.kl_coef = 0"),
        (p.compile.mode is not None or bool(p.compile.options),
         "torchtitan's apply_compile passes no compile.mode or compile.options to torch.compile; leave them out"),
    ]
    for bad, why in problems:
        if bad:
            raise ConformanceError(f"{where} cannot run on the torchtitan provider: {why}.")
    if p.generator.backend != "native":
        raise ConformanceError(
            f"{where} asks for the {p.generator.backend} generator; the torchtitan provider runs the native "
            f"generator over torchtitan's model. {CUDA_ONLY}, and this version does not drive it; here, "
            f"{vllm_registration_status(p.torchtitan.flavor)}. Use --tc-generator native."
        )


class TorchtitanStack:
    name = "torchtitan"
    probe_sites = ProbeSites(
        embedding="tok_embeddings", final_norm="norm", layers="layers",
        block={
            "attn_norm": ("attention_norm", None), "q_norm": ("attention.q_norm", None),
            "k_norm": ("attention.k_norm", None), "q_rope": ("attention.inner_attention", 0),
            "k_rope": ("attention.inner_attention", 1), "attention": ("attention.inner_attention", None),
            "attn_residual": ("ffn_norm", 0), "mlp_norm": ("ffn_norm", None), "mlp": ("feed_forward", None),
        },
    )

    def __init__(self) -> None:
        self.generator: NativeGenerator | None = None

    def build(self, ctx: BuildContext, ckpt: Path | None) -> Trainer:
        p = self.profile = ctx.profile
        check_profile(p)
        self.api = load_torchtitan()
        self.spec = flavor_spec(self.api, p.torchtitan.flavor, p.generator.max_model_len)
        if self.spec.model.vocab_size < VOCAB_SIZE:
            raise ConformanceError(f"torchtitan flavor {p.torchtitan.flavor!r} has fewer than the task's {VOCAB_SIZE} tokens.")
        self.device = ctx.device
        self.dims = None
        if p.parallel.tp > 1:
            require_process_group(p.parallel.tp, f"profile {p.name!r}")
            attach_tp_plan(self.api, self.spec, p.parallel.tp)
            self.dims = tp_dims(self.api, p.parallel.tp, ctx.device)
        trainer = TorchtitanTrainer(build_model(self.spec, ctx.device, ctx.dtype, p.seed), self.api, p.grpo, p.sampling.spec)
        self._policy = self._capture_policy()
        config = GeneratorConfig.from_profile(p, ctx.device, self._policy)
        gen_model = build_generator_model(self.api, self.spec, ctx.device, ctx.dtype, config.cache_rows, config.max_model_len, self.dims)
        self._unwrap(gen_model)
        compile_blocks(self.api, gen_model, p.compile, ctx.ledger, "generator", self.dims)
        self.generator = NativeGenerator(
            gen_model, vocab_size=self.spec.model.vocab_size, config=config,
            forward=lambda tokens, positions, slots: gathered(gen_model(tokens, positions=positions, attention_masks=slots)),
        )
        return trainer

    def _unwrap(self, model) -> None:
        """parallel.unwrap_async: the embedding's all-reduce (block 0's input) resolved as it leaves
        the embedding (`unwrap_async_output`: apply_compile's blocks trace their own hooks)."""
        if self.dims is not None and self.profile.parallel.unwrap_async:
            unwrap_async_output(model.tok_embeddings)

    def _capture_policy(self) -> list[int]:
        """torchtitan's decode capture sizes for max_num_seqs (an explicit cudagraph.sizes wins).
        Sets the report's note on where its policy and ours differ."""
        p = self.profile
        try:
            policy = torchtitan_capture_policy(p.max_num_seqs)
            self._policy_note, sizes = policy.note(), policy.sizes
        except LookupError as e:
            self._policy_note, sizes = f"{e}; ours is used", p.capture_sizes
        return p.capture_sizes if p.cudagraph.sizes is not None else sizes

    def load_weights(self, trainer: Trainer, ckpt: Path | None) -> None:
        """torchtitan's own init ran at build; a checkpoint loads through its HF state-dict adapter."""
        if ckpt is not None:
            load_hf_checkpoint(trainer.model, self.spec, ckpt, self.profile.torchtitan.flavor)

    def place(self, ctx: BuildContext, trainer: Trainer, ckpt: Path | None) -> None:
        """After the warm-up, under TP: torchtitan's plan shards the trainer's full weights (rank 0's
        copy, which the warm-up broadcast to all) and the optimizer is rebuilt over the shards."""
        if self.dims is not None:
            parallelize(self.api, self.spec, trainer.model, self.dims)
            self._unwrap(trainer.model)
            trainer.reset_optimizer()

    def compile_trainer(self, ctx: BuildContext, trainer: Trainer) -> None:
        compile_blocks(self.api, trainer.model, self.profile.compile, ctx.ledger, "trainer", self.dims)

    def capture_policy(self) -> list[int]:
        return self._policy

    def eager_copy(self, trainer: Trainer, dtype: torch.dtype):
        """torchtitan's model of the flavor at `dtype`, uncompiled and unsharded, with the trainer's
        current weights (gathered under TP: a collective, every rank calls it)."""
        model = build_model(self.spec, self.device, dtype, self.profile.seed)
        model.load_state_dict({n: gathered(t) for n, t in trainer.model.state_dict().items()})
        return model.requires_grad_(False).eval()

    def score(self, model, tokens: torch.Tensor, sampling: SamplingSpec) -> torch.Tensor:
        return self.api.compute_logprobs(scoring_logits(model(tokens)[:, :-1], sampling), tokens[:, 1:])

    def vocab_size(self) -> int:
        return self.spec.model.vocab_size

    def weight_checksums(self, trainer: Trainer) -> dict[str, float]:
        return {n: float(t.double().sum()) for n, t in full_state_dict(trainer.model).items()}

    def describe(self) -> dict[str, str]:
        return {
            "provider": f"torchtitan {self.api.version}",
            "generator": "native",
            "torchtitan": f"{self.api.version} ({self.api.location})"
            + (f"; stood in for {', '.join(self.api.shims)} (missing from this torch)" if self.api.shims else ""),
            "flavor": self.profile.torchtitan.flavor,
            "attention": "trainer: torchtitan ScaledDotProductAttention (causal); generator: KV cache",
            "capture_policy": self._policy_note,
            **({"tensor_parallel": f"torchtitan {self.spec.parallelize_fn.__name__}, {self.dims.tp} ranks, DTensor"}
               if self.dims is not None else {}),
        }

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
            self.generator = None
