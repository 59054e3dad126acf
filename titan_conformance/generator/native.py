"""The native generator: the same Qwen3 blocks over a static KV cache, batched prefill + decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.sampling import gumbel_noise, sample_tokens
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.attention import KVCacheAttention
from titan_conformance.model.qwen3 import Qwen3Model
from titan_conformance.trainer.logprobs import logprobs_from_logits


@dataclass
class Completion:
    """One sampled completion."""

    prompt_ids: list[int]
    token_ids: list[int]
    """Generated tokens, including the final EOS when one was sampled."""
    logprobs: list[float]
    """Logprob of each generated token under the distribution it was sampled from."""
    finished: bool
    """True when the completion ended on EOS (False: stopped at max_tokens)."""


class NativeGenerator:
    """Generates with the shared model code; weights arrive from the trainer in place."""

    def __init__(
        self,
        args: ModelArgs,
        compile_config: CompileConfig,
        ledger: CompileLedger,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.max_num_seqs, self.max_model_len, self.device = max_num_seqs, max_model_len, device
        with torch.device(device):
            self.model = Qwen3Model(args).to(dtype)
        self.model.requires_grad_(False).eval()
        self.model.set_inner_attention(
            lambda _: KVCacheAttention(max_num_seqs, max_model_len, args.n_kv_heads, args.head_dim, dtype, device)
        )
        self.region = apply_regional_compile(self.model, compile_config, ledger, role="generator")

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weight sync: copies the trainer's tensors into the generator's in place (no rebuild, no
        recompile: parameters are graph inputs of the compiled blocks)."""
        params = dict(self.model.named_parameters())
        seen = set()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise ConformanceError(f"Weight sync sent {name!r}, which the generator's model lacks.")
                params[name].copy_(tensor)
                seen.add(name)
        if missing := sorted(set(params) - seen):
            raise ConformanceError(f"Weight sync did not send {missing[0]!r} ({len(missing)} missing).")

    @torch.no_grad()
    def forward_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Runs the blocks over [B, S] tokens at `positions`, writing the KV cache; returns logits."""
        return self.model(tokens, positions)

    @torch.no_grad()
    def score(self, completions: list[Completion], temperature: float) -> list[torch.Tensor]:
        """Logprobs of each completion's tokens from ONE prefill over prompt + completion (no
        decode): what the prefill-vs-decode check compares the sampled logprobs against."""
        out = []
        for start in range(0, len(completions), self.max_num_seqs):
            part = completions[start : start + self.max_num_seqs]
            seqs = [c.prompt_ids + c.token_ids for c in part]
            width = max(len(s) for s in seqs)
            tokens = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
            for i, seq in enumerate(seqs):
                tokens[i, : len(seq)] = torch.tensor(seq)
            positions = torch.arange(width, device=self.device).repeat(len(seqs), 1)
            logp = logprobs_from_logits(self.forward_step(tokens, positions)[:, :-1], tokens[:, 1:], temperature)
            for i, c in enumerate(part):
                first = len(c.prompt_ids) - 1
                out.append(logp[i, first : first + len(c.token_ids)].float().cpu())
        return out

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        seed: int,
        eos_id: int,
    ) -> list[Completion]:
        """n samples of every prompt (prompt-major order). Deterministic for a given seed."""
        rows = [p for p in prompts for _ in range(n)]
        bsz, longest = len(rows), max(len(p) for p in rows)
        if bsz > self.max_num_seqs:
            raise ConformanceError(
                f"{len(prompts)} prompts x n={n} = {bsz} sequences exceed the generator's "
                f"max_num_seqs={self.max_num_seqs}; raise max_num_seqs in the profile."
            )
        if longest + max_tokens > self.max_model_len:
            raise ConformanceError(
                f"A prompt of {longest} tokens + max_tokens={max_tokens} exceeds max_model_len="
                f"{self.max_model_len}; raise max_model_len in the profile."
            )
        rng = torch.Generator().manual_seed(seed)
        vocab = self.model.args.vocab_size
        lengths = torch.tensor([len(p) for p in rows], device=self.device)
        tokens = torch.zeros(bsz, longest, dtype=torch.long, device=self.device)
        for i, p in enumerate(rows):
            tokens[i, : len(p)] = torch.tensor(p)
        positions = torch.arange(longest, device=self.device).repeat(bsz, 1)
        logits = self.forward_step(tokens, positions)[torch.arange(bsz), lengths - 1]

        out_tokens, out_logprobs = [], []
        done = torch.zeros(bsz, dtype=torch.bool, device=self.device)
        for step in range(max_tokens):
            next_tok, logp = sample_tokens(logits, gumbel_noise((bsz, vocab), rng, self.device), temperature)
            out_tokens.append(next_tok)
            out_logprobs.append(logp)
            done |= next_tok == eos_id
            if bool(done.all()) or step == max_tokens - 1:
                break
            logits = self.forward_step(next_tok.unsqueeze(1), (lengths + step).unsqueeze(1))[:, 0]

        toks = torch.stack(out_tokens, 1).tolist()
        lps = torch.stack(out_logprobs, 1).tolist()
        completions = []
        for prompt, t, lp in zip(rows, toks, lps):
            end = t.index(eos_id) + 1 if eos_id in t else len(t)
            completions.append(Completion(list(prompt), t[:end], lp[:end], eos_id in t))
        return completions
