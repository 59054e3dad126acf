"""The whole GRPO system built from a profile: trainer and generator sharing one compiled model."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from titan_conformance.compilation import CompileLedger, apply_regional_compile
from titan_conformance.errors import ConformanceError
from titan_conformance.data_files import resolve_checkpoint
from titan_conformance.generator import Completion, NativeGenerator
from titan_conformance.generator.native import GenerateStats
from titan_conformance.model import ModelArgs, Qwen3Model
from titan_conformance.model.checkpoint import load_checkpoint, read_model_args, save_checkpoint
from titan_conformance.system.profile import Profile, check_tp
from titan_conformance.system.timing import timed
from titan_conformance.task import Reward, SortLettersTask, TaskTokenizer
from titan_conformance.task.sort_letters import VOCAB_SIZE, Problem, build_tokenizer
from titan_conformance.task.warm_up import warm_up
from titan_conformance.vllm_support import vllm_version
from titan_conformance.trainer import GRPOConfig, RolloutBatch, Trainer, group_advantages, token_logprobs

STARTUP_PHASES = ("build", "weight_load", "warmup", "compile", "capture", "first_generate")
"""In the order they run; `warmup` (a random checkpoint's supervised warm-up) is outside the
startup budget."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConformanceError(
            "--device cuda was asked for, but torch sees no CUDA device (torch "
            f"{torch.__version__}); run on a GPU runner with a CUDA build of torch, or use --device cpu."
        )
    if name not in ("cpu", "cuda"):
        raise ConformanceError(f"Unknown device {name!r}; use cpu, cuda or auto.")
    return torch.device(name)


@dataclass
class StepRecord:
    """What one GRPO step did and measured."""

    step: int
    loss: float
    reward: Reward
    avg_tokens: float
    logprob_diff: torch.Tensor
    """Trainer minus generator logprob of every sampled token (1-D, fp32, on CPU)."""
    times: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: generate, train, weight_sync."""
    token_positions: torch.Tensor | None = None
    """Position in its completion (0 = first generated token) of each `logprob_diff` entry."""
    sequence_index: torch.Tensor | None = None
    """Which completion of the step (0-based, prompt-major) each `logprob_diff` entry belongs to."""
    trainer_logprobs: torch.Tensor | None = None
    """The trainer's logprob of each entry (before its update), aligned with `logprob_diff`."""
    generator_logprobs: torch.Tensor | None = None
    """The generator's logprob of each entry (as sampled), aligned with `logprob_diff`."""
    rewards: torch.Tensor | None = None
    """Total reward of each completion."""
    advantages: torch.Tensor | None = None
    """GRPO advantage of each completion."""
    grad_norm: float | None = None
    """The trainer step's gradient norm before clipping."""
    decode: GenerateStats | None = None
    """The rollout's decode steps and graph replays (None when the generator does not say)."""

    @property
    def seconds(self) -> float:
        return sum(self.times.values())

    def line(self) -> str:
        d = self.logprob_diff
        return (
            f"Step {self.step:2d} | Loss: {self.loss:+.4f} | Reward: {self.reward.total:+.3f} "
            f"(correctness={self.reward.correctness:+.3f}, format={self.reward.format:+.3f}) | "
            f"Avg tokens: {self.avg_tokens:.0f} | Logprob diff: mean={float(d.mean()):.4e}, "
            f"max={float(d.abs().max()):.4e} | Time: {self.seconds:.1f}s"
        )


def mean_reward(rewards: list[Reward]) -> Reward:
    return Reward(
        sum(r.correctness for r in rewards) / len(rewards), sum(r.format for r in rewards) / len(rewards)
    )


def rollout_batch(
    completions: list[Completion], advantages: torch.Tensor, pad_id: int, device: torch.device, width: int = 0
) -> RolloutBatch:
    """Right-pads prompt + completion into one tensor at least `width` wide, with the mask and
    logprobs aligned to targets (entry t scores token t + 1)."""
    seqs = [c.prompt_ids + c.token_ids for c in completions]
    width = max(width, *(len(s) for s in seqs))
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
    gen_lp = torch.zeros(len(seqs), width - 1)
    for i, (c, s) in enumerate(zip(completions, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        start = len(c.prompt_ids) - 1
        mask[i, start : start + len(c.token_ids)] = True
        gen_lp[i, start : start + len(c.token_ids)] = torch.tensor(c.logprobs)
    return RolloutBatch(tokens.to(device), mask.to(device), gen_lp.to(device), advantages.to(device))


class GRPOSystem:
    """Builds and runs the reference GRPO system. Startup phases are timed in `startup`.

    This is the default provider of the conformance suite (see `titan_conformance.provider`).
    """

    name = "reference"
    BASE_CAPABILITIES = frozenset(
        {"grpo", "trainer_logprobs", "generator_logprobs", "weight_sync", "compile_ledger", "startup_phases",
         "capture_policy", "reference_logprobs"}
    )

    @property
    def capabilities(self) -> frozenset[str]:
        native = isinstance(self.generator, NativeGenerator)  # only the native generator can be probed and timed
        scores = native or self.generator.can_score(self.profile.sampling.temperature)
        return (self.BASE_CAPABILITIES - ({"generator_logprobs"} if not scores else set())) | (
            {"cudagraphs"} if native and self.generator.graphs else set()) | ({"decode_timing"} if native else set())

    def __init__(
        self, profile: Profile, device: str = "cpu", model_path: str | None = None,
        ledger: CompileLedger | None = None,
    ) -> None:
        """`ledger`: record compilations there (the caller keeps them even when building fails)."""
        self.profile = profile
        self.device = resolve_device(device)
        self.dtype = getattr(torch, profile.model.dtype)
        self.ledger = (ledger or CompileLedger()).__enter__()
        self.startup: dict[str, float] = {}
        self.history: list[StepRecord] = []
        self._rng = random.Random(profile.seed)
        spec = model_path or profile.model.checkpoint
        ckpt = None if spec == "random" else resolve_checkpoint(spec)
        s = profile.sampling
        try:
            with timed(self.startup, "build", self.device):
                # The toy task brings its own character tokenizer; its ids fit any vocab >= 16.
                self.tokenizer = TaskTokenizer(build_tokenizer())
                self.task = SortLettersTask(self.tokenizer)
                self._build(ckpt)
            with timed(self.startup, "weight_load", self.device):
                self._load_weights(ckpt)
            if profile.model.warmup_steps:
                with timed(self.startup, "warmup", self.device):
                    self._warm_up_on_task()
            with timed(self.startup, "weight_load", self.device):
                self._place_weights(ckpt)
                self.sync_weights()
            with timed(self.startup, "compile", self.device):
                self._wait_warm_start()
                self._compile_trainer()
                self._warm_up()
            with timed(self.startup, "capture", self.device):
                self.captures = self.generator.capture()
            with timed(self.startup, "first_generate", self.device):
                self.rollout(self.task.validation_set(s.num_prompts_per_step), seed=2**31 - 1)
        except BaseException:
            self.close()
            raise

    # --- what a provider built on this class overrides -----------------------------------------

    def _build(self, ckpt: Path | None) -> None:
        """Builds the trainer and (native) generator: modules, no weights yet."""
        profile = self.profile
        args = self.model_args = self._model_args(ckpt)
        self.trainer = Trainer(self._new_model(args), profile.grpo, profile.sampling.temperature, self._reference(args, profile.grpo))
        self.tp_mesh = None
        if profile.parallel.tp > 1:
            from titan_conformance.parallel import tp_mesh

            self.tp_mesh = tp_mesh(profile.parallel.tp)
        if profile.generator.backend == "native":
            self.generator = NativeGenerator.for_qwen3(
                args, profile.compile, self.ledger, profile.max_num_seqs,
                profile.generator.max_model_len, self.device, self.dtype,
                profile.cudagraph.mode, profile.capture_sizes,
                self.tp_mesh, profile.parallel.unwrap_async and self.tp_mesh is not None,
            )

    def _load_weights(self, ckpt: Path | None) -> None:
        """Seeded random init or the checkpoint, into the trainer (and reference), unsharded."""
        for model in filter(None, (self.trainer.model, self.trainer.reference)):
            if ckpt is None:
                model.init_weights(self.profile.seed)
            else:
                load_checkpoint(model, ckpt)

    def _place_weights(self, ckpt: Path | None) -> None:
        """After the warm-up: TP sharding; a vLLM generator starts here, loading its weights itself."""
        if self.tp_mesh is not None:
            self._wait_warm_start()  # sharding imports DTensor's modules: not alongside the warm start's
            self._shard_trainer()
        if self.profile.generator.backend == "vllm":
            self.generator = self._start_vllm(ckpt)

    def _wait_warm_start(self) -> None:
        """Before the main thread compiles or imports much (`compilation/warm_start.py`)."""
        if isinstance(getattr(self, "generator", None), NativeGenerator):
            self.generator.wait_warm_start()

    def _compile_trainer(self) -> None:
        apply_regional_compile(self.trainer.model, self.profile.compile, self.ledger, "trainer")
        if self.trainer.reference is not None:
            apply_regional_compile(self.trainer.reference, self.profile.compile, self.ledger, "reference")

    def _warm_up_on_task(self) -> None:
        """The profile's supervised warm-up, unsharded, on the system's device; the reference (KL)
        model starts from its result too. Under TP every rank warms up alike (same seed, same
        data), and rank 0's result is broadcast so that no rank drifts by a rounding."""
        m = self.profile.model
        warm_up(self.trainer.model, self.task, m.warmup_steps, self.profile.seed, batch=m.warmup_batch, lr=m.warmup_lr)
        if self.profile.parallel.tp > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for param in self.trainer.model.parameters():
                    dist.broadcast(param.data, src=0)
        if self.trainer.reference is not None:
            self.trainer.reference.load_state_dict(self.trainer.model.state_dict())

    def _shard_trainer(self) -> None:
        """TP: shards the trainer's (and reference's) full weights over the mesh; the optimizer is
        rebuilt over the sharded parameters."""
        from titan_conformance.parallel import apply_tp, unwrap_async_inputs

        for model in filter(None, (self.trainer.model, self.trainer.reference)):
            apply_tp(model, self.tp_mesh)
            if self.profile.parallel.unwrap_async:
                unwrap_async_inputs(model)
        self.trainer.reset_optimizer()

    def _start_vllm(self, ckpt: Path | None):
        """vLLM loads weights itself: from the checkpoint, or from an export of the trainer's
        seeded random weights (removed at close)."""
        from titan_conformance.generator.vllm_backend import VllmGenerator

        if ckpt is None:
            self._export_dir = tempfile.TemporaryDirectory(prefix="titan-conformance-weights-")
            ckpt = Path(self._export_dir.name) / "model"
            save_checkpoint(self.trainer.model, ckpt, self.dtype)
        p = self.profile
        return VllmGenerator(
            str(ckpt), p.compile, self.ledger, p.max_num_seqs, p.generator.max_model_len, self.device,
            p.model.dtype, p.cudagraph.mode, p.capture_sizes, p.seed,
        )

    def _model_args(self, ckpt: Path | None) -> ModelArgs:
        where = f"profile {self.profile.name!r}"
        if ckpt is None and not self.profile.model.config and self.profile.torchtitan.flavor:
            raise ConformanceError(
                f"{where} describes torchtitan's {self.profile.torchtitan.flavor!r} flavor and no model.config: "
                "run it with --tc-system torchtitan."
            )
        if ckpt is None:
            args = ModelArgs.from_hf_config(self.profile.model.config, source=f"{where} model.config")
        else:
            args = read_model_args(ckpt)
        tp = self.profile.parallel.tp
        check_tp(args, tp, where)
        if tp > 1:
            import torch.distributed as dist

            world = dist.get_world_size() if dist.is_initialized() else 1
            if world != tp:
                raise ConformanceError(
                    f"{where} asks for parallel.tp = {tp}: build it on every rank of a process group of "
                    f"{tp} ranks (titan_conformance.parallel.run_ranks does; this process has "
                    f"{'no process group' if world == 1 else f'{world} ranks'})."
                )
            if self.profile.generator.backend != "native":
                raise ConformanceError(f"{where}: parallel.tp > 1 runs the native generator only in this version.")
        if args.vocab_size < VOCAB_SIZE:
            raise ConformanceError(
                f"The model's vocab_size {args.vocab_size} is smaller than the toy task's {VOCAB_SIZE} tokens."
            )
        return args

    def _new_model(self, args) -> Qwen3Model:
        with torch.device(self.device):
            return Qwen3Model(args).to(self.dtype)

    def _reference(self, args, grpo: GRPOConfig) -> Qwen3Model | None:
        return self._new_model(args).requires_grad_(False) if grpo.kl_coef > 0 else None

    def _batch(self, completions: list[Completion], advantages: torch.Tensor) -> RolloutBatch:
        """The trainer's batch, always max_model_len wide, as torchtitan's trainer trains on a fixed
        sequence length: Inductor picks kernels by the size hints of batch x length (a reduction's
        accumulation, a persistent reduction) and guards on them (`4*B*S <= 4096` on a CPU), so
        batches of varying width recompiled the trainer's backward mid-run, one graph per range."""
        return rollout_batch(completions, advantages, self.tokenizer.pad_id, self.device, self.profile.generator.max_model_len)

    def _warm_up(self) -> None:
        """Compiles every shape class the run and the checks use: the trainer's fwd+bwd and its
        no-grad pass on a full batch at the trainer's fixed width, generator prefill + decode.
        Gradients are dropped; weights do not change."""
        s = self.profile.sampling
        bsz = s.num_prompts_per_step * s.n
        tokens = torch.full((bsz, self.profile.generator.max_model_len), self.tokenizer.bos_id, dtype=torch.long, device=self.device)
        self.trainer.model(tokens).float().sum().backward()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.trainer.logprobs(tokens)
        prompts = [[self.tokenizer.bos_id] * 5] * s.num_prompts_per_step
        self.generator.generate(prompts, s.n, 2, s.temperature, 0, self.tokenizer.eos_id)

    def sync_weights(self) -> None:
        self.generator.load_weights(self.trainer.named_weights())

    def rollout(self, problems: list[Problem], seed: int, n: int | None = None,
                temperature: float | None = None) -> list[Completion]:
        s = self.profile.sampling
        return self.generator.generate(
            [p.prompt_ids for p in problems],
            s.n if n is None else n,
            s.max_tokens,
            s.temperature if temperature is None else temperature,
            seed,
            self.tokenizer.eos_id,
        )

    def step(self) -> StepRecord:
        """One GRPO step: generate, score, train, sync weights."""
        s, times = self.profile.sampling, {}
        index = len(self.history) + 1
        problems = self.task.sample(self._rng, s.num_prompts_per_step)
        with timed(times, "generate", self.device):
            completions = self.rollout(problems, seed=self.profile.seed * 100_003 + index)
        decode = getattr(self.generator, "last_generate", None)
        rewards = [self.task.reward(p, c.token_ids) for p, c in zip((p for p in problems for _ in range(s.n)), completions)]
        advantages = group_advantages(torch.tensor([r.total for r in rewards]), s.n)
        batch = self._batch(completions, advantages)
        with timed(times, "train", self.device):
            result = self.trainer.step(batch)
        with timed(times, "weight_sync", self.device):
            self.sync_weights()
        mask = batch.completion_mask
        trainer_lp, generator_lp = (lp[mask].float().cpu() for lp in (result.trainer_logprobs, batch.generator_logprobs))
        record = StepRecord(
            index, result.loss, mean_reward(rewards),
            sum(len(c.token_ids) for c in completions) / len(completions), trainer_lp - generator_lp, times,
            token_positions=(mask.cumsum(-1) - 1)[mask].cpu(),
            sequence_index=torch.arange(len(completions), device=mask.device).unsqueeze(1).expand_as(mask)[mask].cpu(),
            trainer_logprobs=trainer_lp, generator_logprobs=generator_lp,
            rewards=torch.tensor([r.total for r in rewards]), advantages=advantages.float().cpu(),
            grad_norm=result.grad_norm, decode=decode,
        )
        self.history.append(record)
        return record

    def describe(self) -> dict[str, str]:
        backend = self.profile.generator.backend
        return {
            "provider": self.name,
            "generator": backend if backend == "native" else f"vllm {vllm_version()}",
            "device": str(self.device),
            "dtype": self.profile.model.dtype,
            "torch": torch.__version__,
        }

    def trainer_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]:
        """The trainer's logprob of every completion token, scoring all completions as one batch."""
        batch = self._batch(completions, torch.zeros(len(completions)))
        logp = self.trainer.logprobs(batch.tokens).float().cpu()
        mask = batch.completion_mask.cpu()
        return [row[m] for row, m in zip(logp, mask)]

    def generator_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]:
        """The generator's logprob of every completion token from one prefill (no decode)."""
        return self.generator.score(completions, self.profile.sampling.temperature)

    def compile_ledger(self) -> CompileLedger:
        return self.ledger

    def time_decode_step(self, batch: int, position: int) -> float:
        """Seconds of one bare decode step of `batch` rows at `position` (`NativeGenerator.time_decode_step`)."""
        return self.generator.time_decode_step(batch, position)

    def reference_logprobs(self, completions: list[Completion], dtype: torch.dtype) -> list[torch.Tensor]:
        """The trainer's current weights in a fresh eager copy of the model at `dtype`, scoring every
        completion token at the sampling temperature: float64 is the oracle, the profile's dtype the
        precision floor that trainer and generator are held to. Scored a few sequences at a time,
        so that no [batch, length, vocab] float64 logits are ever whole."""
        model = self._eager_copy(dtype)
        batch = self._batch(completions, torch.zeros(len(completions)))
        per_row = batch.tokens.shape[1] * self._vocab_size() * 8
        chunk = max(1, (1 << 30) // per_row)
        with torch.no_grad():
            logp = torch.cat([
                self._score(model, batch.tokens[i : i + chunk]).double().cpu()
                for i in range(0, len(completions), chunk)
            ])
        mask = batch.completion_mask.cpu()
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return [row[m] for row, m in zip(logp, mask)]

    def _eager_copy(self, dtype: torch.dtype):
        """An uncompiled, unsharded copy of the trainer's model at `dtype`, with its current weights."""
        with torch.device(self.device):
            model = Qwen3Model(self.model_args).to(dtype)
        weights = self.trainer.model.state_dict()
        if self.tp_mesh is not None:
            from titan_conformance.parallel.tp_plan import full_state_dict

            weights = full_state_dict(self.trainer.model)  # (with a tied lm_head's name, which ours lacks)
        expected = model.state_dict()
        if missing := sorted(set(expected) - set(weights)):
            raise ConformanceError(f"The trainer's model has no {missing[0]!r}: it is not the model its profile describes.")
        model.load_state_dict({name: weights[name] for name in expected})
        return model.requires_grad_(False).eval()

    def _score(self, model, tokens: torch.Tensor) -> torch.Tensor:
        return token_logprobs(model, tokens, self.profile.sampling.temperature)

    def _vocab_size(self) -> int:
        return self.model_args.vocab_size

    def cudagraph_sizes(self) -> tuple[list[int], list[int]]:
        """(what the capture-size policy yields, what the generator actually captured)."""
        return self.profile.capture_sizes, sorted(getattr(self.generator, "graphs", {}))

    def probe_decode(self, batch: int, how: str):
        """One decode step from a fixed state (`DecodeProbe`): graph, compiled or eager."""
        return self.generator.probe_decode(batch, how)

    def validate(self) -> Reward:
        """Mean reward over the fixed validation set (chunked to max_num_seqs)."""
        v, problems, rewards = self.profile.validation, self.task.validation_set(self.profile.validation.size), []
        chunk = self.profile.max_num_seqs
        for i in range(0, len(problems), chunk):
            part = problems[i : i + chunk]
            completions = self.rollout(part, seed=self.profile.seed, n=1, temperature=v.temperature)
            rewards += [self.task.reward(p, c.token_ids) for p, c in zip(part, completions)]
        return mean_reward(rewards)

    def close(self) -> None:
        """Shuts the generator down, stops reading Dynamo's logs, frees device memory and files."""
        generator = self.__dict__.pop("generator", None)
        if hasattr(generator, "close"):
            generator.close()
        self.ledger.__exit__(None, None, None)
        self.__dict__.pop("trainer", None)
        if export := self.__dict__.pop("_export_dir", None):
            export.cleanup()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> "GRPOSystem":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_system(profile: Profile, device: str = "cpu", model_path: str | None = None) -> GRPOSystem:
    """The default provider factory."""
    return GRPOSystem(profile, device=device, model_path=model_path)
