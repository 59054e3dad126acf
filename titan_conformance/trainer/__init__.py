from titan_conformance.profile.sections import GRPOConfig
from titan_conformance.trainer.grpo import RolloutBatch, group_advantages, grpo_loss
from titan_conformance.trainer.logprobs import token_logprobs
from titan_conformance.trainer.trainer import Trainer, TrainStepResult

__all__ = [
    "GRPOConfig",
    "RolloutBatch",
    "Trainer",
    "TrainStepResult",
    "group_advantages",
    "grpo_loss",
    "token_logprobs",
]
