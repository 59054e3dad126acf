"""The trainer of the torchtitan system: torchtitan's logprob function and GRPO loss."""

from __future__ import annotations

import torch

from titan_conformance.parallel.grads import clip_grad_norm_
from titan_conformance.providers.torchtitan.compat import TorchtitanAPI
from titan_conformance.trainer import GRPOConfig, RolloutBatch, Trainer
from titan_conformance.profile import SamplingSpec
from titan_conformance.trainer.logprobs import scoring_logits
from titan_conformance.trainer.trainer import TrainStepResult


class TorchtitanTrainer(Trainer):
    """AdamW over a torchtitan model; logprobs by `compute_logprobs` on the logits of the sampling
    spec (tempered, truncated where it reports processed logprobs: what the generator samples from
    and reports), the loss by torchtitan's `GRPOLoss` (per-token clipped
    ratio, summed over completion tokens and divided by their count; it has no KL term)."""

    def __init__(self, model: torch.nn.Module, api: TorchtitanAPI, config: GRPOConfig, sampling: SamplingSpec) -> None:
        super().__init__(model, config, sampling)
        self.api = api
        self.loss_fn = api.GRPOLoss.Config(clip_eps=config.clip_eps).build()

    def _scaled_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return scoring_logits(self.model(tokens)[:, :-1], self.sampling)

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """By the training forward, as `Trainer.logprobs` says why."""
        logits = self._scaled_logits(tokens)
        with torch.no_grad():
            return self.api.compute_logprobs(logits, tokens[:, 1:])

    def step(self, batch: RolloutBatch) -> TrainStepResult:
        self.model.train()
        logits = self._scaled_logits(batch.tokens)
        labels, mask = batch.tokens[:, 1:], batch.completion_mask
        with torch.no_grad():
            logp = self.api.compute_logprobs(logits, labels)
        advantages = batch.advantages.unsqueeze(1).expand_as(mask) * mask
        loss, _ = self.loss_fn(
            logits, labels, float(mask.sum()),
            generator_logprobs=batch.generator_logprobs, advantages=advantages, loss_mask=mask,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return TrainStepResult(loss.item(), grad_norm.item(), logp)
