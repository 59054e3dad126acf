"""The task warm-up: it teaches the task, and on CUDA its graph replays train as eager steps do."""

import copy
import random
import warnings

import pytest
import torch

from titan_conformance.fixtures.make_tiny import TINY
from titan_conformance.model import Qwen3Model
from titan_conformance.task import SortLettersTask, TaskTokenizer
from titan_conformance.task.sort_letters import build_tokenizer
from titan_conformance.task.warm_up import IGNORED, demonstrations, warm_up


@pytest.fixture(scope="module")
def task():
    return SortLettersTask(TaskTokenizer(build_tokenizer()))


def completion_loss(model, task, seed: int = 7) -> float:
    tokens, targets = demonstrations(task, random.Random(seed), 64, task.demonstration_width)
    with torch.no_grad():
        logits = model(tokens.to(next(model.parameters()).device))[:, :-1].float().cpu()
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORED))


def test_demonstrations_target_the_completion_only(task):
    tokens, targets = demonstrations(task, random.Random(0), 8, task.demonstration_width)
    for row, target in zip(tokens, targets):
        seq = row[row != task.tokenizer.pad_id].tolist()
        equals = seq.index(task.tokenizer.encode("=")[0])
        scored = (target != IGNORED).nonzero().flatten().tolist()
        assert scored == list(range(equals, len(seq) - 1))  # the answer's letters and <eos>
        assert target[scored].tolist() == seq[equals + 1 :]
    assert tokens.shape == (8, task.demonstration_width)


def test_warm_up_teaches_the_task(task):
    model = Qwen3Model(TINY)
    model.init_weights(0)
    before = completion_loss(model, task)
    warm_up(model, task, 10, seed=0)
    assert completion_loss(model, task) < 0.7 * before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graph_replays_train_as_eager_steps_do(task):
    """The same 8 steps with and without the graph end at the same weights (a replay of a stale
    batch, or of a step whose optimizer state stood still, would not), and the 5 replayed steps
    did train: the weights moved past where the 3 eager steps before the capture left them."""
    model = Qwen3Model(TINY).cuda()
    model.init_weights(0)
    graphed, eager, first_three = model, copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager steps, no warning about them
        assert warm_up(graphed, task, 8, seed=1, graphed=True) == 5
        assert warm_up(eager, task, 8, seed=1, graphed=False) == 0
    warm_up(first_three, task, 3, seed=1)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    for (name, a), b in zip(graphed.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = [float((a - b).detach().abs().max()) for a, b in zip(graphed.parameters(), first_three.parameters())]
    assert max(moved) > 1e-3


class SyncingModel(Qwen3Model):
    """A model whose forward reads a value back to the host, as some do: its step cannot be captured."""

    def forward(self, tokens, *args, **kwargs):
        if float(tokens.float().mean()) < 0:
            raise AssertionError("unreachable")
        return super().forward(tokens, *args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_step_that_cannot_be_captured_warms_up_eagerly(task):
    model = SyncingModel(TINY).cuda()
    model.init_weights(0)
    eager = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="runs eagerly: its step could not be captured"):
        assert warm_up(model, task, 6, seed=1) == 0
    warm_up(eager, task, 6, seed=1, graphed=False)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the caller's stream is back
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
