"""The vLLM generator backend: vLLM's engine running our model (see vllm_model.py).

The engine runs in process (VLLM_ENABLE_V1_MULTIPROCESSING=0): weights sync by handing the
trainer's tensors to vLLM's supported reload path (`reload_weights` through `collective_rpc`) with
no engine restart, and the model's compile events land in the system's ledger. vLLM's own
compilation is off (mode NONE): torch.compile is ours, regional, from the shared CompileConfig.
vLLM's cudagraph mode and capture sizes come from our profile and capture-size policy.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import uuid
from typing import Iterable

import torch

from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.errors import ConformanceError
from titan_conformance.generator import vllm_hooks
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.checkpoint import hf_name, read_model_args
from titan_conformance.profile import SamplingSpec
from titan_conformance.protocol import Completion, GenerateStats
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

IN_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""0 runs vLLM's engine in this process (weight sync by reference, the model's compiles in our ledger)."""
GPU_MEMORY_UTILIZATION = 0.1
"""vLLM refuses to start unless the free GPU memory is at least this fraction of the whole, even
where `kv_cache_memory_bytes` sizes the cache; the trainer holds part of the same GPU."""


def compilation_config(config: GeneratorConfig) -> dict:
    """vLLM CompilationConfig (as a dict): its compiler off, its CUDA graphs ours to configure.
    vLLM's CPU platform supports no CUDA graphs, so there the mode is NONE."""
    if not config.captured_sizes:
        return {"mode": 0, "cudagraph_mode": "NONE"}
    return {"mode": 0, "cudagraph_mode": config.cudagraph_mode.value, "cudagraph_capture_sizes": list(config.captured_sizes)}


def kv_cache_bytes(args: ModelArgs, config: GeneratorConfig, dtype: str) -> int:
    """Twice the K and V of max_num_seqs full-length sequences (vLLM rounds to blocks), at least
    256 MiB: sized from the profile, not from what is left of a GPU the trainer shares."""
    per_token = 2 * args.n_layers * args.n_kv_heads * args.head_dim * getattr(torch, dtype).itemsize
    return max(256 << 20, 2 * per_token * config.max_num_seqs * config.max_model_len)


def engine_phases(start: float, built: float, marks: dict[str, float]) -> dict[str, float]:
    """The startup phases vLLM's engine start holds (perf_counter() times, marks from the model):
    build from the engine's start to its first forward (its config, workers and its load of the
    weights); compile from there (the profile run, where our blocks compile at its largest token
    count) to the warm-up before its first graph capture, plus vLLM's kernel warm-up after the last
    capture (a full execute_model and sampling step that JIT-compiles its Triton sampler kernels);
    capture from its first to its last captured forward (each size's warm-up included: size 1
    compiles again, since Dynamo specializes a dimension of 1)."""
    first = marks.get("first_forward", built)
    capture = marks.get("capture", built)
    captured = marks.get("captured", capture)
    return {"build": first - start, "compile": (capture - first) + (built - captured), "capture": captured - capture}


def decode_stats(dispatches: list[tuple[int, int | None, str]]) -> GenerateStats | None:
    """A generate's decode steps (forwards of one token per request) and how many replayed a FULL
    graph, from the engine's dispatch log (`vllm_hooks.log_dispatches`); batch is the largest."""
    decode = [(reqs, mode) for reqs, uniform, mode in dispatches if uniform == 1]
    if not decode:
        return None
    return GenerateStats(max(r for r, _ in decode), len(decode), sum(mode == "FULL" for _, mode in decode))


class VllmGenerator:
    """Same interface as NativeGenerator: generate, score, load_weights, close."""

    def __init__(
        self, checkpoint: str, *, config: GeneratorConfig, compile_config: CompileConfig, ledger: CompileLedger,
        dtype: str, seed: int,
    ) -> None:
        if vllm_version() is None:
            raise ConformanceError(f"The vllm generator backend needs vLLM, which does not import here. {INSTALL_HINT}")
        self.last_generate: GenerateStats | None = None
        """From vLLM's cudagraph dispatches (None where its model runner has no cudagraph manager)."""
        args = read_model_args(checkpoint)
        self._saved_env = os.environ.get(IN_PROCESS)
        os.environ[IN_PROCESS] = "0"  # restored at close
        from vllm import LLM

        from titan_conformance.generator import vllm_model

        vllm_model.register()
        self._ledger_key = uuid.uuid4().hex
        vllm_model.LEDGERS[self._ledger_key] = ledger
        self.device, self.max_num_seqs, self.config = config.device, config.max_num_seqs, config
        self.compilation = compilation_config(config)
        start = time.perf_counter()
        try:
            self.llm = LLM(
                model=str(checkpoint),
                hf_overrides={
                    "architectures": [vllm_model.ARCHITECTURE],
                    "titan_compile": dataclasses.asdict(compile_config),
                    "titan_ledger": self._ledger_key,
                },
                skip_tokenizer_init=True,
                dtype=dtype,
                seed=seed,
                max_model_len=config.max_model_len,
                max_num_seqs=config.max_num_seqs,
                logprobs_mode=f"{config.sampling.logprobs}_logprobs",
                # Weight sync changes what a cached prompt prefix would compute.
                enable_prefix_caching=False,
                compilation_config=self.compilation,
                kv_cache_memory_bytes=kv_cache_bytes(args, config, dtype),
                **({"gpu_memory_utilization": GPU_MEMORY_UTILIZATION} if config.device.type == "cuda" else {}),
            )
            self.counts_dispatches = self.llm.collective_rpc(vllm_hooks.log_dispatches)[0]
            built = time.perf_counter()
            self.engine = self.llm.collective_rpc(vllm_hooks.engine_view)[0]
            """What vLLM resolved (`vllm_hooks.engine_view`), read once the engine captured its graphs."""
            self.startup = engine_phases(start, built, self.engine["startup_marks"])
            runner = self.engine["model_runner"]
            self.probes = frozenset({"decode_timing", "graph_bypass"} if self.counts_dispatches else ())
            self.lacks = {
                "decode_probes": (
                    "vLLM's runner runs whole scheduler steps (execute_model), never one decode step from a "
                    "fixed state with its logits and sampling noise, so FULL replay is judged by whole "
                    "rollouts with and without graphs (graph_bypass)"
                ),
                "activations": (
                    "the engine's model runs inside vLLM's model runner, whose batches pack and schedule "
                    "tokens its own way (chunked prefill, its attention metadata): a probe would need the "
                    "runner's token order per scheduler step, which this backend does not hook yet; the "
                    "logprob-level parity checks judge it"
                ),
            }
            if not self.counts_dispatches:
                missing = (f"vLLM's model runner {runner} has no cudagraph_manager whose dispatch the vllm "
                           "generator hooks (to count decode steps and graph replays, bypass the graphs, time a replay)")
                self.lacks |= {"decode_timing": missing, "graph_bypass": missing}
        except BaseException:
            self.close()
            raise
        finally:
            vllm_model.LEDGERS.pop(self._ledger_key, None)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weight sync through vLLM's supported reload path; no engine restart. Copies on the
        engine's device (a round trip through host memory took 0.75 s of a 1.0 s sync for 0.6B on an
        H100): vLLM's reload may keep the tensors it is given, which must not be the trainer's."""
        weights = [(hf_name(name), tensor.detach().to(self.device, copy=True)) for name, tensor in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def _run(self, token_rows: list[list[int]], **params):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row) for row in token_rows]
        return self.llm.generate(prompts, SamplingParams(**params), use_tqdm=False)

    def generate(
        self, prompts: list[list[int]], n: int, max_tokens: int, sampling: SamplingSpec, seed: int, eos_id: int,
        graphs: bool = True,
        sequence_noise: bool = False,
    ) -> list[Completion]:
        """n samples of every prompt; `graphs` False dispatches every forward to no graph.
        `sequence_noise` is how vLLM always samples a seeded request: from a generator of the
        request's own, seeded by `seed` + its sample index, whatever its neighbours.

        vLLM applies temperature, then top-k and top-p; its processed_logprobs are after all three,
        its raw_logprobs before any, untempered. So under `processed` the engine samples at the
        temperature and reports processed logprobs as they are; under `raw` the model's logits come
        out already tempered (`vllm_hooks.set_logits_spec`) and vLLM samples them at temperature 1,
        the same distribution, whose raw_logprobs are then the full tempered softmax."""
        self.config.check_sampling(sampling)
        if len(prompts) * n > self.max_num_seqs:
            raise ConformanceError(
                f"{len(prompts)} prompts x n={n} exceed the generator's max_num_seqs={self.max_num_seqs}."
            )
        self.llm.collective_rpc(vllm_hooks.take_dispatches)  # drop what earlier requests ran
        if not graphs:
            self.llm.collective_rpc(vllm_hooks.set_eager_dispatch, args=(True,))
        temperature, tempers = sampling.temperature, self.config.sampling.logprobs == "raw"
        if tempers:
            self.llm.collective_rpc(vllm_hooks.set_logits_spec, args=(dataclasses.replace(sampling, top_p=1.0, top_k=0),))
            temperature = 1.0 if temperature > 0 else 0.0  # the logits come tempered; 0 stays greedy
        try:
            outputs = self._run(
                prompts, n=n, temperature=temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                max_tokens=max_tokens, seed=seed, logprobs=0, stop_token_ids=[eos_id],
            )
        finally:
            if not graphs:
                self.llm.collective_rpc(vllm_hooks.set_eager_dispatch, args=(False,))
            if tempers:
                self.llm.collective_rpc(vllm_hooks.set_logits_spec, args=(None,))
        if self.counts_dispatches:
            self.last_generate = decode_stats(self.llm.collective_rpc(vllm_hooks.take_dispatches)[0])
        completions = []
        for prompt, out in zip(prompts, outputs):
            for c in out.outputs:
                tokens = list(c.token_ids)
                logprobs = [step[t].logprob for t, step in zip(tokens, c.logprobs)]
                completions.append(Completion(list(prompt), tokens, logprobs, eos_id in tokens))
        return completions

    def score(self, completions: list[Completion], sampling: SamplingSpec) -> list[torch.Tensor]:
        """Logprobs of each completion's tokens in `sampling`'s semantics from one vLLM prefill (no
        decode): vLLM's prompt logprobs, with the model's logits tempered (and truncated, where
        processed) as the sampler treats them (its prompt logprobs skip the sampling processors)."""
        rows = [c.prompt_ids + c.token_ids for c in completions]
        self.llm.collective_rpc(vllm_hooks.set_logits_spec, args=(sampling,))
        try:
            outputs = self._run(rows, temperature=1.0, max_tokens=1, prompt_logprobs=0, seed=0)
        finally:
            self.llm.collective_rpc(vllm_hooks.set_logits_spec, args=(None,))
        scored = []
        for c, row, out in zip(completions, rows, outputs):
            # prompt_logprobs[i] scores row[i]; entry 0 is None
            scored.append(torch.tensor([out.prompt_logprobs[i][row[i]].logprob for i in range(len(c.prompt_ids), len(row))]))
        return scored

    def captured_sizes(self) -> list[int]:
        """The batch sizes vLLM holds a FULL graph for (each at num_reqs = min(size, max_num_seqs))."""
        return sorted({tokens for tokens, _ in self.engine["full_graphs"]})

    def capture_counts(self) -> dict[int, int]:
        """Not counted: vLLM captures inside its engine's start, through no hook of ours."""
        return {}

    def cudagraph_mode(self) -> str:
        return self.engine["cudagraph_mode"]

    def describe(self) -> dict[str, str]:
        """What vLLM resolved, for the report's environment."""
        e = self.engine
        backends = ", ".join(e["attention_backends"]) or "none"
        if "flash_attn_version" in e:
            backends += f" (FlashAttention {e['flash_attn_version']})"
        return {
            "vllm_model_runner": e["model_runner"],
            "vllm_attention_backend": backends,
            "vllm_cudagraph_mode": e["cudagraph_mode"],
            "vllm_capture_sizes": str(e["capture_sizes"]),
            "vllm_full_graphs": f"{len(e['full_graphs'])} at (num_tokens, num_reqs) {e['full_graphs']}",
        }

    def time_decode_step(self, batch: int, position: int) -> float | None:
        """One replay of the FULL graph a decode step of `batch` requests runs in vLLM (None where it
        runs without one); `position` is what the graph's buffers hold, the run's last step's."""
        return self.llm.collective_rpc(vllm_hooks.time_graph_replay, args=(batch, 5))[0]

    def capture(self):
        """vLLM captures its own graphs at engine start (sizes from our policy)."""
        return None

    def close(self) -> None:
        """Shuts the in-process engine down and frees its memory (LLM has no shutdown() in 0.32);
        puts VLLM_ENABLE_V1_MULTIPROCESSING back as it was."""
        if "_saved_env" in self.__dict__:
            saved = self.__dict__.pop("_saved_env")
            if saved is None:
                os.environ.pop(IN_PROCESS, None)
            else:
                os.environ[IN_PROCESS] = saved
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
