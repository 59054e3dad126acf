"""Our model stack: the reference Qwen3 in trainer and generator, native or vLLM generator, TP."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from titan_conformance.compilation import apply_regional_compile
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.base import Generator, GeneratorConfig
from titan_conformance.generator.qwen3 import qwen3_generator
from titan_conformance.model import ModelArgs, Qwen3Model
from titan_conformance.model.checkpoint import load_checkpoint, read_model_args, save_checkpoint
from titan_conformance.profile import SamplingSpec, check_tp
from titan_conformance.providers.activations import ProbeSites
from titan_conformance.providers.grpo import BuildContext
from titan_conformance.task.sort_letters import VOCAB_SIZE
from titan_conformance.trainer import Trainer, token_logprobs
from titan_conformance.vllm_support import vllm_version


class ReferenceStack:
    """Qwen3Model for the trainer (and the KL reference), our native generator over the same
    model class (or vLLM's engine over it), DTensor TP over our plan."""

    name = "reference"
    probe_sites = ProbeSites(
        embedding="embed_tokens", final_norm="norm", layers="layers",
        block={
            "attn_norm": ("input_layernorm", None), "q_norm": ("self_attn.q_norm", None),
            "k_norm": ("self_attn.k_norm", None), "q_rope": ("self_attn.inner_attention", 0),
            "k_rope": ("self_attn.inner_attention", 1), "attention": ("self_attn.inner_attention", None),
            "attn_residual": ("post_attention_layernorm", 0), "mlp_norm": ("post_attention_layernorm", None),
            "mlp": ("mlp", None),
        },
    )

    def __init__(self) -> None:
        self.generator: Generator | None = None
        self.tp_mesh = None
        self._export_dir: tempfile.TemporaryDirectory | None = None

    def build(self, ctx: BuildContext, ckpt: Path | None) -> Trainer:
        profile = self.profile = ctx.profile
        args = self.model_args = self._model_args(profile, ckpt)
        self.dtype = ctx.dtype
        reference = self._new_model(args, ctx).requires_grad_(False) if profile.grpo.kl_coef > 0 else None
        trainer = Trainer(self._new_model(args, ctx), profile.grpo, profile.sampling.spec, reference)
        if profile.parallel.tp > 1:
            from titan_conformance.parallel import tp_mesh

            self.tp_mesh = tp_mesh(profile.parallel.tp)
        if profile.generator.backend == "native":
            self.generator = qwen3_generator(
                args, config=GeneratorConfig.from_profile(profile, ctx.device), compile_config=profile.compile,
                ledger=ctx.ledger, dtype=ctx.dtype, tp_mesh=self.tp_mesh,
                unwrap_async=profile.parallel.unwrap_async and self.tp_mesh is not None,
            )
        return trainer

    def load_weights(self, trainer: Trainer, ckpt: Path | None) -> None:
        """Seeded random init or the checkpoint, into the trainer (and reference), unsharded."""
        for model in filter(None, (trainer.model, trainer.reference)):
            if ckpt is None:
                model.init_weights(self.profile.seed)
            else:
                load_checkpoint(model, ckpt)

    def place(self, ctx: BuildContext, trainer: Trainer, ckpt: Path | None) -> None:
        """After the warm-up: TP sharding; a vLLM generator starts here, loading its weights itself."""
        if self.tp_mesh is not None:
            if self.generator is not None:
                self.generator.wait_warm_start()  # sharding imports DTensor's modules: not alongside the warm start's
            self._shard(trainer)
        if self.profile.generator.backend == "vllm":
            self.generator = self._start_vllm(ctx, trainer, ckpt)

    def compile_trainer(self, ctx: BuildContext, trainer: Trainer) -> None:
        apply_regional_compile(trainer.model, self.profile.compile, ctx.ledger, "trainer")
        if trainer.reference is not None:
            apply_regional_compile(trainer.reference, self.profile.compile, ctx.ledger, "reference")

    def capture_policy(self) -> list[int]:
        return self.profile.capture_sizes

    def eager_copy(self, trainer: Trainer, dtype: torch.dtype) -> Qwen3Model:
        with torch.device(next(trainer.model.parameters()).device):
            model = Qwen3Model(self.model_args).to(dtype)
        weights = self._full_weights(trainer)  # (under TP with a tied lm_head's name, which ours lacks)
        expected = model.state_dict()
        if missing := sorted(set(expected) - set(weights)):
            raise ConformanceError(f"The trainer's model has no {missing[0]!r}: it is not the model its profile describes.")
        model.load_state_dict({name: weights[name] for name in expected})
        return model.requires_grad_(False).eval()

    def score(self, model, tokens: torch.Tensor, sampling: SamplingSpec) -> torch.Tensor:
        return token_logprobs(model, tokens, sampling)

    def vocab_size(self) -> int:
        return self.model_args.vocab_size

    def weight_checksums(self, trainer: Trainer) -> dict[str, float]:
        return {n: float(t.double().sum()) for n, t in self._full_weights(trainer).items()}

    def describe(self) -> dict[str, str]:
        backend = self.profile.generator.backend
        return {"generator": backend if backend == "native" else f"vllm {vllm_version()}"}

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
            self.generator = None
        if self._export_dir is not None:
            self._export_dir.cleanup()
            self._export_dir = None

    # --- ours ----------------------------------------------------------------------------------

    def _full_weights(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        if self.tp_mesh is None:
            return {n: p.detach() for n, p in trainer.model.named_parameters()}
        from titan_conformance.parallel.tp_plan import full_state_dict

        return full_state_dict(trainer.model)  # a collective: every rank calls it

    def _shard(self, trainer: Trainer) -> None:
        """TP: shards the trainer's (and reference's) full weights over the mesh; the optimizer is
        rebuilt over the sharded parameters."""
        from titan_conformance.parallel import apply_tp, unwrap_async_inputs

        for model in filter(None, (trainer.model, trainer.reference)):
            apply_tp(model, self.tp_mesh)
            if self.profile.parallel.unwrap_async:
                unwrap_async_inputs(model)
        trainer.reset_optimizer()

    def _start_vllm(self, ctx: BuildContext, trainer: Trainer, ckpt: Path | None):
        """vLLM loads weights itself: from the checkpoint, or from an export of the trainer's
        seeded random weights (removed at close)."""
        from titan_conformance.generator.vllm_backend import VllmGenerator

        if ckpt is None:
            self._export_dir = tempfile.TemporaryDirectory(prefix="titan-conformance-weights-")
            ckpt = Path(self._export_dir.name) / "model"
            save_checkpoint(trainer.model, ckpt, ctx.dtype)
        p = self.profile
        return VllmGenerator(
            str(ckpt), config=GeneratorConfig.from_profile(p, ctx.device), compile_config=p.compile, ledger=ctx.ledger,
            dtype=p.model.dtype, seed=p.seed,
        )

    def _model_args(self, profile, ckpt: Path | None) -> ModelArgs:
        where = f"profile {profile.name!r}"
        if ckpt is None and not profile.model.config and profile.torchtitan.flavor:
            raise ConformanceError(
                f"{where} describes torchtitan's {profile.torchtitan.flavor!r} flavor and no model.config: "
                "run it with --tc-system torchtitan."
            )
        if ckpt is None:
            args = ModelArgs.from_hf_config(profile.model.config, source=f"{where} model.config")
        else:
            args = read_model_args(ckpt)
        tp = profile.parallel.tp
        check_tp(args.to_hf_config(), tp, where)
        if tp > 1:
            from titan_conformance.parallel.launch import require_process_group

            require_process_group(tp, where)
            if profile.generator.backend != "native":
                raise ConformanceError(f"{where}: parallel.tp > 1 runs the native generator only in this version.")
        if args.vocab_size < VOCAB_SIZE:
            raise ConformanceError(
                f"The model's vocab_size {args.vocab_size} is smaller than the toy task's {VOCAB_SIZE} tokens."
            )
        return args

    def _new_model(self, args: ModelArgs, ctx: BuildContext) -> Qwen3Model:
        with torch.device(ctx.device):
            return Qwen3Model(args).to(ctx.dtype)
