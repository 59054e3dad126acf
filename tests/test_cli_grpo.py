"""End to end: `titan-conformance grpo` trains the tiny system and prints the documented lines."""

import re
import subprocess
import sys

import pytest

STEP = re.compile(
    r"^Step +(\d+) \| Loss: [+-]\d+\.\d{4} \| Reward: [+-]\d\.\d{3} \(correctness=[+-]\d\.\d{3}, "
    r"format=[+-]\d\.\d{3}\) \| Avg tokens: \d+ \| Logprob diff: mean=-?\d\.\d{4}e[+-]\d\d, "
    r"max=\d\.\d{4}e[+-]\d\d \| Time: \d+\.\ds$"
)
SUMMARY = re.compile(r"^(Pre: |Post:) mean_reward=([+-]\d\.\d{3}) \(correctness=[+-]\d\.\d{3}, format=[+-]\d\.\d{3}\)$")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "titan_conformance.cli", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def twenty_steps():
    return cli("grpo", "--suite", "tiny-cpu", "--steps", "20", "--seed", "0")


def test_grpo_run_prints_startup_steps_and_validation(twenty_steps):
    assert twenty_steps.returncode == 0, twenty_steps.stderr
    lines = twenty_steps.stdout.splitlines()
    startup = next(line for line in lines if line.startswith("Startup:"))
    for phase in ("build=", "weight_load=", "compile=", "first_generate="):
        assert phase in startup
    steps = [STEP.match(line) for line in lines if line.startswith("Step")]
    assert all(steps) and [int(m.group(1)) for m in steps] == list(range(1, 21))


def test_grpo_learns_on_the_tiny_task(twenty_steps):
    summary = {m.group(1).strip(": "): float(m.group(2)) for m in map(SUMMARY.match, twenty_steps.stdout.splitlines()) if m}
    assert summary["Post"] > summary["Pre"] + 0.05, twenty_steps.stdout


def test_bad_checkpoint_is_one_clear_error_not_a_traceback(tmp_path):
    result = cli("grpo", "--steps", "1", "--model-path", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stderr and "config.json" in result.stderr


def test_cuda_without_a_gpu_is_a_clear_error():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = cli("grpo", "--steps", "1", "--device", "cuda")
    assert result.returncode == 2 and "no CUDA device" in result.stderr and "Traceback" not in result.stderr
