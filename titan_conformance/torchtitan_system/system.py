"""The GRPO system built from torchtitan's components: `--tc-system torchtitan`.

Trainer: the flavor's model from torchtitan's registry, built and initialized (or loaded through
its HF state-dict adapter) as torchtitan does, compiled by torchtitan's `apply_compile`, trained
with torchtitan's `compute_logprobs` and `GRPOLoss`. Generator: the same model class and weights
with our KV cache as inner attention, compiled by the same `apply_compile` under the same config,
capturing FULL decode graphs at the sizes torchtitan's own capture-size policy yields. Everything
else (the toy task, rollouts, weight sync, timing, the checks' probes) is the reference system's.
"""

from __future__ import annotations

from pathlib import Path

from titan_conformance.errors import ConformanceError
from titan_conformance.generator.native import NativeGenerator, cache_rows
from titan_conformance.system.grpo_system import GRPOSystem
from titan_conformance.system.profile import Profile
from titan_conformance.task.sort_letters import VOCAB_SIZE
from titan_conformance.torchtitan_system import DEFAULT_SUITE
from titan_conformance.torchtitan_system.capture_policy import torchtitan_capture_policy
from titan_conformance.torchtitan_system.compat import load_torchtitan
from titan_conformance.torchtitan_system.models import (
    build_model, compile_blocks, flavor_spec, load_hf_checkpoint, use_kv_cache,
)
from titan_conformance.torchtitan_system.trainer import TorchtitanTrainer
from titan_conformance.trainer.logprobs import tempered
from titan_conformance.torchtitan_system.vllm_path import CUDA_ONLY, vllm_registration_status

class TorchtitanSystem(GRPOSystem):
    name = "torchtitan"

    def _check_profile(self) -> None:
        p, where = self.profile, f"profile {self.profile.name!r}"
        problems = [
            (not p.torchtitan.flavor, f"it sets no torchtitan.flavor; run --tc-suite {DEFAULT_SUITE} or add "
             "[torchtitan] flavor = \"debugmodel\" (or another Qwen3 flavor)"),
            (p.parallel.tp > 1, "parallel.tp > 1 is not built by the torchtitan provider in this version"),
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

    def _build(self, ckpt: Path | None) -> None:
        self._check_profile()
        p = self.profile
        self.api = load_torchtitan()
        self.spec = flavor_spec(self.api, p.torchtitan.flavor, p.generator.max_model_len)
        if self.spec.model.vocab_size < VOCAB_SIZE:
            raise ConformanceError(f"torchtitan flavor {p.torchtitan.flavor!r} has fewer than the task's {VOCAB_SIZE} tokens.")
        self.tp_mesh = None
        trainer_model = build_model(self.spec, self.device, self.dtype, p.seed)
        self.trainer = TorchtitanTrainer(trainer_model, self.api, p.grpo, p.sampling.temperature)
        self._policy_sizes = self._capture_sizes()
        rows = cache_rows(p.max_num_seqs, p.cudagraph.mode, self._policy_sizes, self.device)
        gen_model = build_model(self.spec, self.device, self.dtype, p.seed)
        gen_model.requires_grad_(False).eval()
        use_kv_cache(gen_model, rows, p.generator.max_model_len, self.dtype, self.device)
        compile_blocks(self.api, gen_model, p.compile, self.ledger, "generator")
        self.generator = NativeGenerator(
            gen_model, self.spec.model.vocab_size, p.max_num_seqs, p.generator.max_model_len, self.device,
            p.cudagraph.mode, self._policy_sizes,
            forward=lambda tokens, positions, slots: gen_model(tokens, positions=positions, attention_masks=slots),
        )

    def _capture_sizes(self) -> list[int]:
        """torchtitan's decode capture sizes for max_num_seqs (an explicit cudagraph.sizes wins;
        none in mode NONE). Sets the report's note on where its policy and ours differ."""
        p = self.profile
        try:
            policy = torchtitan_capture_policy(p.max_num_seqs)
            self._policy_note, sizes = policy.note(), policy.sizes
        except LookupError as e:
            self._policy_note, sizes = f"{e}; ours is used", p.capture_sizes
        if p.cudagraph.mode == "NONE":
            return []
        return p.capture_sizes if p.cudagraph.sizes is not None else sizes

    def _load_weights(self, ckpt: Path | None) -> None:
        if ckpt is not None:
            load_hf_checkpoint(self.trainer.model, self.spec, ckpt, self.profile.torchtitan.flavor)

    def _compile_trainer(self) -> None:
        compile_blocks(self.api, self.trainer.model, self.profile.compile, self.ledger, "trainer")

    def _eager_copy(self, dtype):
        """torchtitan's model of the flavor at `dtype`, uncompiled, with the trainer's current weights."""
        model = build_model(self.spec, self.device, dtype, self.profile.seed)
        model.load_state_dict(self.trainer.model.state_dict())
        return model.requires_grad_(False).eval()

    def _score(self, model, tokens):
        logits = tempered(model(tokens)[:, :-1], self.profile.sampling.temperature)
        return self.api.compute_logprobs(logits, tokens[:, 1:])

    def _vocab_size(self) -> int:
        return self.spec.model.vocab_size

    def cudagraph_sizes(self) -> tuple[list[int], list[int]]:
        """(torchtitan's policy for this profile, what the generator actually captured)."""
        return self._policy_sizes, sorted(self.generator.graphs)

    def describe(self) -> dict[str, str]:
        out = super().describe()
        out.update(
            provider=f"torchtitan {self.api.version}",
            torchtitan=f"{self.api.version} ({self.api.location})",
            flavor=self.profile.torchtitan.flavor,
            attention="trainer: torchtitan ScaledDotProductAttention (causal); generator: KV cache",
            capture_policy=self._policy_note,
        )
        return out


def build_system(profile: Profile, device: str = "cpu", model_path: str | None = None) -> TorchtitanSystem:
    """The `torchtitan` entry point's factory."""
    return TorchtitanSystem(profile, device=device, model_path=model_path)
