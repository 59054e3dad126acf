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
import uuid
from typing import Iterable

import torch

from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.protocol import Completion
from titan_conformance.model.checkpoint import hf_name, read_model_args
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

IN_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""0 runs vLLM's engine in this process (weight sync by reference, the model's compiles in our ledger)."""
FULL_VOCAB_SCORING = 4096
"""Largest vocabulary whose every prompt logprob vLLM is asked for (see `VllmGenerator.score`)."""

def compilation_config(config: GeneratorConfig) -> dict:
    """vLLM CompilationConfig (as a dict): its compiler off, its CUDA graphs ours to configure.
    vLLM's CPU platform supports no CUDA graphs, so there the mode is NONE."""
    if not config.captured_sizes:
        return {"mode": 0, "cudagraph_mode": "NONE"}
    return {"mode": 0, "cudagraph_mode": config.cudagraph_mode.value, "cudagraph_capture_sizes": list(config.captured_sizes)}


class VllmGenerator:
    """Same interface as NativeGenerator: generate, score, load_weights, close."""

    def __init__(
        self, checkpoint: str, *, config: GeneratorConfig, compile_config: CompileConfig, ledger: CompileLedger,
        dtype: str, seed: int,
    ) -> None:
        if vllm_version() is None:
            raise ConformanceError(f"The vllm generator backend needs vLLM, which does not import here. {INSTALL_HINT}")
        self.last_generate = None  # vLLM's scheduler does not say how many decode steps it ran
        self.vocab_size = read_model_args(checkpoint).vocab_size
        self._saved_env = os.environ.get(IN_PROCESS)
        os.environ[IN_PROCESS] = "0"  # restored at close
        from vllm import LLM

        from titan_conformance.generator import vllm_model

        vllm_model.register()
        self._ledger_key = uuid.uuid4().hex
        vllm_model.LEDGERS[self._ledger_key] = ledger
        self.device, self.max_num_seqs = config.device, config.max_num_seqs
        self.compilation = compilation_config(config)
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
                logprobs_mode="processed_logprobs",
                # Weight sync changes what a cached prompt prefix would compute.
                enable_prefix_caching=False,
                compilation_config=self.compilation,
                max_logprobs=self.vocab_size if self.vocab_size <= FULL_VOCAB_SCORING else 20,
                **({"kv_cache_memory_bytes": 256 << 20} if config.device.type == "cpu" else {}),
            )
        except BaseException:
            self.close()
            raise
        finally:
            vllm_model.LEDGERS.pop(self._ledger_key, None)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weight sync through vLLM's supported reload path; no engine restart."""
        weights = [(hf_name(name), tensor.detach().to("cpu").clone()) for name, tensor in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def _run(self, token_rows: list[list[int]], **params):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row) for row in token_rows]
        return self.llm.generate(prompts, SamplingParams(**params), use_tqdm=False)

    def generate(
        self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, seed: int, eos_id: int,
        sequence_noise: bool = False,
    ) -> list[Completion]:
        """`sequence_noise` is how vLLM always samples a seeded request: from a generator of the
        request's own, seeded by `seed` + its sample index, whatever its neighbours."""
        if len(prompts) * n > self.max_num_seqs:
            raise ConformanceError(
                f"{len(prompts)} prompts x n={n} exceed the generator's max_num_seqs={self.max_num_seqs}."
            )
        outputs = self._run(
            prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed, logprobs=0,
            stop_token_ids=[eos_id],
        )
        completions = []
        for prompt, out in zip(prompts, outputs):
            for c in out.outputs:
                tokens = list(c.token_ids)
                logprobs = [step[t].logprob for t, step in zip(tokens, c.logprobs)]
                completions.append(Completion(list(prompt), tokens, logprobs, eos_id in tokens))
        return completions

    def can_score(self, temperature: float) -> bool:
        """vLLM's prompt logprobs skip the sampling processors (temperature included, whatever
        `logprobs_mode` says), so at a temperature other than 0 or 1 a token's tempered logprob
        needs the whole vocabulary's prompt logprobs: asked for up to FULL_VOCAB_SCORING tokens."""
        return temperature in (0.0, 1.0) or self.vocab_size <= FULL_VOCAB_SCORING

    def score(self, completions: list[Completion], temperature: float) -> list[torch.Tensor]:
        """Logprobs of each completion's tokens at `temperature` from one vLLM prefill (no decode)."""
        if not self.can_score(temperature):
            raise ConformanceError(
                f"vLLM's prompt logprobs are untempered, and a vocabulary of {self.vocab_size} tokens is too large to "
                f"ask for all of them (limit {FULL_VOCAB_SCORING}): the vllm backend cannot score at temperature {temperature}."
            )
        full = temperature not in (0.0, 1.0)
        rows = [c.prompt_ids + c.token_ids for c in completions]
        outputs = self._run(rows, temperature=temperature, max_tokens=1, prompt_logprobs=-1 if full else 0, seed=0)
        scored = []
        for c, row, out in zip(completions, rows, outputs):
            first = len(c.prompt_ids)  # prompt_logprobs[i] scores row[i]; entry 0 is None
            if not full:
                scored.append(torch.tensor([out.prompt_logprobs[i][row[i]].logprob for i in range(first, len(row))]))
                continue
            raw = torch.full((len(row) - first, self.vocab_size), float("-inf"), dtype=torch.float64)
            for j, i in enumerate(range(first, len(row))):
                for token, lp in out.prompt_logprobs[i].items():
                    raw[j, token] = lp.logprob
            tempered = torch.log_softmax(raw / temperature, dim=-1)  # = log_softmax(logits / T)
            scored.append(tempered[torch.arange(len(row) - first), torch.tensor(row[first:])].float())
        return scored

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
