"""The typed sections of a conformance profile: what to build, how to run it, what to hold it to.

Every section is a frozen, keyword-only dataclass with a docstring per field; `loading.py` builds
them from TOML and rejects what they do not allow. Values derived from several sections (the
capture sizes, the tolerance of the profile's dtype) are computed here, once, and asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from titan_conformance.profile.compile_config import CompileConfig
from titan_conformance.profile.cudagraph import CudagraphMode, policy_capture_sizes
from titan_conformance.profile.sampling import LogprobSemantics, SamplingSpec

Dtype = Literal["float32", "bfloat16"]
Backend = Literal["native", "vllm"]


@dataclass(frozen=True, kw_only=True)
class GRPOConfig:
    """Optimization settings of the trainer."""

    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    clip_eps: float = 0.2
    """PPO-style clip range of the importance ratio: [1 - eps, 1 + eps]."""
    kl_coef: float = 0.0
    """Weight of the k3 KL penalty to the frozen initial policy; 0 builds no reference model."""


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """Which weights to build the model from."""

    checkpoint: str = "fixture:tiny-qwen3"
    """HF checkpoint directory, `fixture:NAME` for one shipped with the package, or "random" for
    seeded random weights of the shape in `config` (no hub is reachable from CI or GPU runners)."""
    config: dict = field(default_factory=dict)
    """HF config.json keys of the architecture, used when checkpoint = "random"."""
    dtype: Dtype = "float32"
    """Parameter and activation dtype of trainer and generator: float32 or bfloat16."""
    warmup_steps: int = 0
    """Supervised steps on the toy task after the weights load, before the run, on the device the
    system runs on (startup phase `warmup`, outside the startup budget): random weights sample
    near-uniformly over the vocabulary, so every completion would run to max_tokens and earn the
    same zero reward, a GRPO step would change nothing a check can see, and a generator that
    computes another model would give the same parity statistics. Required (>= 1) with
    checkpoint = "random"."""
    warmup_lr: float = 2e-3
    """AdamW learning rate of the warm-up."""
    warmup_batch: int = 16
    """Demonstrations per warm-up step."""


@dataclass(frozen=True, kw_only=True)
class SamplingSection:
    """How the generator samples rollouts."""

    num_prompts_per_step: int = 8
    """Prompts drawn per GRPO step."""
    n: int = 8
    """Samples per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature; logprobs are compared at this temperature. 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: 0 < top_p <= 1 (1: off); see `SamplingSpec.top_p`."""
    top_k: int = 0
    """Top-k sampling: 0 (off) or >= 1; see `SamplingSpec.top_k`."""
    logprobs: LogprobSemantics = "processed"
    """The logprob semantics trainer and generator must both report under top-p/top-k: `raw` (full
    tempered softmax) or `processed` (renormalized over the kept tokens)."""
    max_tokens: int = 12
    """Most tokens generated per completion."""

    @property
    def spec(self) -> SamplingSpec:
        """What both sides sample and score with."""
        return SamplingSpec(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, logprobs=self.logprobs)


@dataclass(frozen=True, kw_only=True)
class GeneratorSection:
    """The generator engine."""

    backend: Backend = "native"
    """Generator backend: native (ours, static KV cache) or vllm (vLLM's engine on our model)."""
    max_num_seqs: int = 0
    """Largest decode batch; 0 derives it as num_prompts_per_step x n."""
    max_model_len: int = 32
    """KV-cache length per sequence (prompt + completion)."""
    batch_invariant: bool = False
    """The generator is declared batch-invariant: a sequence's tokens and logprobs do not depend on
    its neighbours, its row or the batch size it is padded to (batch-invariant kernels, vLLM's
    VLLM_BATCH_INVARIANT). The determinism checks then demand bitwise equality; otherwise they hold
    the differences to `tolerances.<dtype>.batch_invariance_max_abs`."""


@dataclass(frozen=True, kw_only=True)
class CUDAGraphSection:
    """CUDA graphs of the generator's decode step (CUDA only; ignored on CPU)."""

    mode: CudagraphMode = CudagraphMode.FULL
    """NONE, FULL or FULL_DECODE_ONLY: the whole decode step captured as one graph per size."""
    sizes: list | None = None
    """Explicit capture sizes; left out, the policy derives them (powers of 2 up to the cap, plus
    max_num_seqs and the cap)."""
    max_capture_size: int = 0
    """The policy's cap; 0 means max_num_seqs (all that decode-only graphs need)."""
    replay_max_abs: float = 0.0
    """Allowed |graph replay - the same compiled step without a graph|; 0 demands exact equality."""


@dataclass(frozen=True, kw_only=True)
class ValidationSection:
    """The fixed validation run before and after training."""

    size: int = 64
    """Number of validation prompts."""
    temperature: float = 0.0
    """Sampling temperature for validation (0: greedy). Seeded, so pre and post compare alike."""


@dataclass(frozen=True, kw_only=True)
class ParallelSection:
    """Parallelism of trainer and generator."""

    tp: int = 1
    """Tensor-parallel degree of trainer and generator; must divide the query and key/value head
    counts. TP > 1 runs in a process group of that many ranks (gloo on CPU, NCCL on CUDA)."""
    unwrap_async: bool = True
    """Resolve AsyncCollectiveTensor block inputs (a RowwiseParallel output not yet waited on) to
    plain Tensors before each compiled block. Off, block 0 sees an AsyncCollectiveTensor and the
    others a Tensor: one compiled graph per type, and on torch 2.13 a backward through the
    AsyncCollectiveTensor-traced graph fails with Inductor or aot_eager."""


@dataclass(frozen=True, kw_only=True)
class TorchtitanSection:
    """The model of the torchtitan provider (`--tc-system torchtitan`); other providers ignore it."""

    flavor: str = ""
    """A Qwen3 flavor of torchtitan's model registry (`debugmodel`, `0.6B`, ...); empty: the profile
    is not meant for the torchtitan provider. With checkpoint = "random" the weights come from
    torchtitan's own init; a checkpoint must be an HF-layout one of this flavor's shape."""


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """The GRPO run the suite performs before checking."""

    steps: int = 20
    """GRPO steps (each with its own prompt and completion lengths)."""
    expect_learning: bool = True
    """Whether validation reward must rise over the run (False for random-weight profiles)."""


@dataclass(frozen=True, kw_only=True)
class FloorRatio:
    """How far trainer and generator may be from a float64 oracle of the same weights, in multiples
    of the precision floor: the distance of an eager copy of the model at the profile's dtype (same
    weights, same tokens) to that oracle. Per statistic of |side - oracle| over the sampled tokens."""

    mean_abs: float = 4.0
    """Largest mean |diff| ratio."""
    p99_abs: float = 10.0
    """Largest p99 |diff| ratio (looser than the mean: in fp32 the p99 of a few hundred tokens sits
    on one or two ulps of the largest logprobs, so clean runs swing 0.6-4x)."""
    k3_kl: float = 16.0
    """Largest k3-KL ratio (a second moment: about the square of the others)."""
    pair_mean_abs: float = 4.0
    """Largest mean |trainer - generator| over the floor's mean |diff|: the mismatch itself in units
    of the rounding floor (in bf16 trainer and generator round alike, so this sees what their
    distances to the oracle, each dominated by rounding, do not)."""
    localize: float = 4.0
    """When a parity verdict fails: a probe point (`checks.localize`) diverges where mean |trainer -
    generator| there exceeds this many times its floor, mean |eager copy - oracle| at that point
    (clean fp32 runs on the tiny profile: at most 1.3x at any point inside the blocks, 3x on the
    sampled logprobs of a few sequences)."""


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Allowed trainer-vs-generator logprob differences for one dtype."""

    max_abs: float = 1e-4
    """Largest |trainer - generator| logprob of any sampled token."""
    p99_abs: float = 1e-5
    """99th percentile of |diff|."""
    mean_abs: float = 1e-6
    """Mean |diff|."""
    batch_invariance_max_abs: float = 1e-5
    """Largest change of a trainer logprob when the same sequence sits in another batch, and of a
    generator logprob between repeated rollouts or among other neighbours (unless the generator is
    declared batch-invariant: then none)."""
    floor: FloorRatio = field(default_factory=FloorRatio)
    """Trainer and generator against the float64 oracle, relative to the precision floor."""


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """Parity tolerances per dtype, and the bitwise mode."""

    bitwise: bool = False
    """Require exact equality (fp32 and deterministic settings), whatever the tolerances say."""
    min_tokens: int = 64
    """Fewest sampled tokens a parity verdict must compare; fewer is a failure, not a pass."""
    float32: Tolerance = field(default_factory=Tolerance)
    bfloat16: Tolerance = field(
        default_factory=lambda: Tolerance(max_abs=0.5, p99_abs=0.1, mean_abs=0.02, batch_invariance_max_abs=0.1)
    )


@dataclass(frozen=True, kw_only=True)
class SpeedSection:
    """Speed judged by ratios measured within one run, which hold on noisy shared machines where
    absolute budgets cannot (those are per device class, `Budget`)."""

    generate_overhead: float = 4.0
    """Largest median, over the run's steps, of (generate seconds / decode steps) over one bare
    decode step at the step's batch (a graph replay on CUDA, the compiled step elsewhere) timed
    right after the step: host-side stalls, extra syncs, a lost graph or a slow path show as a
    ratio over this. The prefill and the host's bookkeeping make a healthy run's ratio 1.3-2.5."""


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Time budgets of one device class, in seconds; an unset entry is not checked."""

    build: float | None = None
    """Model construction (both roles)."""
    weight_load: float | None = None
    """Checkpoint load into the trainer and first sync into the generator."""
    warmup: float | None = None
    """The supervised warm-up of a random checkpoint (`model.warmup_steps`); not part of `startup`."""
    compile: float | None = None
    """Regional compile and warm-up of every shape class (trainer fwd+bwd, prefill, decode)."""
    capture: float | None = None
    """FULL CUDA-graph capture of every capture size (0 on CPU)."""
    first_generate: float | None = None
    """The first real rollout batch after compile."""
    startup: float | None = None
    """All startup phases together, the warm-up left out (a real checkpoint needs none)."""
    generate: float | None = None
    """Median rollout time of a GRPO step."""
    train: float | None = None
    """Median trainer step time."""
    weight_sync: float | None = None
    """Median trainer-to-generator weight sync time."""
    step: float | None = None
    """Median whole GRPO step time."""


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A whole conformance profile."""

    name: str = "unnamed"
    """Profile name (the file's stem)."""
    description: str = ""
    """What the profile is for."""
    seed: int = 0
    """Seed of prompt draws and sampling."""
    model: ModelSection = field(default_factory=ModelSection)
    compile: CompileConfig = field(default_factory=CompileConfig)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    cudagraph: CUDAGraphSection = field(default_factory=CUDAGraphSection)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    validation: ValidationSection = field(default_factory=ValidationSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    torchtitan: TorchtitanSection = field(default_factory=TorchtitanSection)
    run: RunSection = field(default_factory=RunSection)
    tolerances: Tolerances = field(default_factory=Tolerances)
    speed: SpeedSection = field(default_factory=SpeedSection)
    budgets: dict[str, Budget] = field(default_factory=dict)
    """Time budgets per device class: `cpu`, or a GPU's model as `device_class.gpu_class` names it
    (h100, h200, a100, b200, l40s, mi300x, ...): `[budgets.h100]`."""

    @property
    def rollouts_per_step(self) -> int:
        """Sequences a GRPO step samples and trains on, num_prompts_per_step x n: the trainer's batch."""
        return self.sampling.num_prompts_per_step * self.sampling.n

    @property
    def max_num_seqs(self) -> int:
        """The largest decode batch: generator.max_num_seqs, or rollouts_per_step."""
        return self.generator.max_num_seqs or self.rollouts_per_step

    @cached_property
    def capture_sizes(self) -> list[int]:
        """What our capture-size policy yields for this profile ([] in mode NONE), on any device."""
        g = self.cudagraph
        return policy_capture_sizes(self.max_num_seqs, g.max_capture_size, g.sizes) if g.mode.captures else []

    @property
    def validation_sampling(self) -> SamplingSpec:
        """The run's sampling at the validation temperature."""
        return dataclasses.replace(self.sampling.spec, temperature=self.validation.temperature)

    @property
    def tolerance(self) -> Tolerance:
        """The parity tolerance of the profile's dtype."""
        return getattr(self.tolerances, self.model.dtype)

    @property
    def label(self) -> str:
        """How reports name it: the profile's name (a variant's is `base[variant]`)."""
        return self.name


