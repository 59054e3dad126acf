"""The trainer: computes logprobs with grad, takes GRPO steps with AdamW."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from titan_conformance.model.qwen3 import Qwen3Model
from titan_conformance.parallel.grads import clip_grad_norm_
from titan_conformance.profile import SamplingSpec
from titan_conformance.profile.sections import GRPOConfig
from titan_conformance.trainer.grpo import RolloutBatch, grpo_loss
from titan_conformance.trainer.logprobs import token_logprobs


@dataclass
class TrainStepResult:
    loss: float
    grad_norm: float
    trainer_logprobs: torch.Tensor
    """[B, S-1] the trainer's logprobs before the update (same weights the generator sampled with)."""


class Trainer:
    def __init__(
        self,
        model: Qwen3Model,
        config: GRPOConfig,
        sampling: SamplingSpec,
        reference: Qwen3Model | None = None,
    ) -> None:
        """`sampling`: what the generator samples with, so the logprobs the trainer scores (and trains
        on) follow its semantics; `reference`: the frozen initial policy for the KL term (needed when
        kl_coef > 0)."""
        self.model, self.config, self.sampling = model, config, sampling
        self.reference = reference
        self.reset_optimizer()

    def reset_optimizer(self, foreach: bool | None = None) -> None:
        """A fresh AdamW over the model's current parameters (after a TP plan replaced them).

        Under TP the DTensor (sharded) and plain (replicated norm) parameters form two param
        groups: AdamW's foreach kernels, torch's default for CUDA parameters, take one list per
        group and refuse a list that mixes both (`aten._foreach_lerp_.Scalar: got mixed
        torch.Tensor and DTensor`; NCCL, torch 2.11). On CPU torch defaults to the per-tensor
        loop, which is why gloo runs never hit it. `foreach`: AdamW's option (None: torch's default).
        """
        params = list(self.model.parameters())
        sharded = [p for p in params if isinstance(p, DTensor)]
        plain = [p for p in params if not isinstance(p, DTensor)]
        self.optimizer = torch.optim.AdamW(
            [{"params": group} for group in (sharded, plain) if group],
            lr=self.config.lr, weight_decay=self.config.weight_decay, betas=(0.9, 0.99), foreach=foreach,
        )

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scored by the training forward (grad mode, graph dropped), as a GRPO step scores: the
        logprobs a check compares are the ones the trainer trains on, and its blocks compile one
        graph (under no_grad Dynamo's grad-mode guard would compile a second: +1 compile at startup)."""
        return token_logprobs(self.model, tokens, self.sampling).detach()

    def step(self, batch: RolloutBatch) -> TrainStepResult:
        self.model.train()
        logp = token_logprobs(self.model, batch.tokens, self.sampling)
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp = token_logprobs(self.reference, batch.tokens, self.sampling)
        loss = grpo_loss(logp, batch, self.config, ref_logp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return TrainStepResult(loss.item(), grad_norm.item(), logp.detach())

    def named_weights(self):
        """What weight sync sends to the generator: (name, tensor) in our parameter names."""
        return ((n, p.detach()) for n, p in self.model.named_parameters())
