import random

from titan_conformance.data_files import fixture_path
from titan_conformance.task import SortLettersTask, TaskTokenizer
from titan_conformance.trainer import group_advantages

import torch


def task():
    return SortLettersTask(TaskTokenizer.from_file(fixture_path("tiny-qwen3") / "tokenizer.json"))


def test_rewards_split_into_correctness_and_format():
    t = task()
    problem = t.problem("dbca")
    enc, eos = t.tokenizer.encode, t.tokenizer.eos_id
    assert t.reward(problem, enc("abcd") + [eos]).total == 1.5
    assert t.reward(problem, enc("abdc") + [eos]) == type(t.reward(problem, []))(0.5, 0.5)
    assert t.reward(problem, enc("abcd")).format == 0.0  # no EOS
    assert t.reward(problem, enc("a") + [eos]).format == 0.0  # too short for format credit
    assert t.reward(problem, []).total == 0.0


def test_prompt_lengths_vary_and_validation_is_fixed():
    t = task()
    lengths = {len(p.prompt_ids) for p in t.sample(random.Random(0), 64)}
    assert len(lengths) >= 4
    assert [p.letters for p in t.validation_set(8)] == [p.letters for p in t.validation_set(8)]


def test_group_advantages_normalize_within_each_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0]), 4)
    torch.testing.assert_close(adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5, rtol=0)
    assert torch.all(adv[4:] == 0)
