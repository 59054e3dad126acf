import torch

from titan_conformance.trainer import GRPOConfig, RolloutBatch, grpo_loss


def batch(adv, gen_lp):
    mask = torch.ones(len(adv), gen_lp.shape[1], dtype=torch.bool)
    return RolloutBatch(torch.zeros(len(adv), gen_lp.shape[1] + 1, dtype=torch.long), mask, gen_lp, torch.tensor(adv))


def test_on_policy_gradient_raises_logprob_of_positive_advantage():
    logp = torch.tensor([[-1.0, -2.0], [-1.5, -0.5]], requires_grad=True)
    loss = grpo_loss(logp, batch([1.0, -1.0], logp.detach().clone()), GRPOConfig())
    loss.backward()
    assert torch.all(logp.grad[0] < 0) and torch.all(logp.grad[1] > 0)  # descent raises row 0, lowers row 1


def test_ratio_is_clipped():
    gen = torch.zeros(1, 1)
    cfg = GRPOConfig(clip_eps=0.2)
    far = torch.tensor([[1.0]], requires_grad=True)  # ratio e > 1.2 with positive advantage: clipped
    grpo_loss(far, batch([1.0], gen), cfg).backward()
    assert far.grad.abs().item() == 0.0
    assert torch.isclose(grpo_loss(far.detach(), batch([1.0], gen), cfg), torch.tensor(-1.2))


def test_kl_term_is_zero_at_the_reference_and_positive_away_from_it():
    logp = torch.tensor([[-1.0, -2.0]])
    b = batch([0.0], logp.clone())
    cfg = GRPOConfig(kl_coef=0.5)
    assert grpo_loss(logp, b, cfg, ref_logp=logp.clone()).item() == 0.0
    assert grpo_loss(logp, b, cfg, ref_logp=logp - 0.3).item() > 0.0
