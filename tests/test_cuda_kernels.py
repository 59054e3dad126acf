"""The generator's Triton kernels (decode attention, sampling) against PyTorch references.

The edge cases (block boundaries, position 0, ties, NaN, small vocabularies) run natively on a GPU,
and on CI, which has none, under Triton's interpreter in a process of its own (the variable must be
set before Triton is imported; inputs and outputs travel through torch.save). On a GPU the kernels
also run at the qwen3-0.6b shape in bf16, and the suite's parity and graph-equivalence checks cover
them inside the model.
"""

import os
import subprocess
import sys

import pytest
import torch

from titan_conformance.model.attention import _expand_kv, grouped_sdpa_decode
from titan_conformance.generator.sampling import gumbel_noise, sample_tokens

_INTERPRET = """
import importlib, sys, torch
module, name = sys.argv[1].split(":")
args, kwargs = torch.load(sys.argv[2])
torch.save(getattr(importlib.import_module(module), name)(*args, **kwargs), sys.argv[3])
"""


def run_kernel(tmp_path, function: str, *args, **kwargs):
    """`function` (module:name) on the given CPU tensors: natively on a GPU when there is one, else
    under Triton's interpreter; returns CPU tensors."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        import importlib

        module, name = function.split(":")
        on_gpu = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(importlib.import_module(module), name)(*on_gpu, **kwargs)
        return tuple(t.cpu() for t in out) if isinstance(out, tuple) else out.cpu()
    torch.save((args, kwargs), tmp_path / "in.pt")
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRET, function, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


# Triton's interpreter computes bf16 dot products wrongly on the CPU (fp16 is right), so the kernel's
# half-precision case runs in fp16 here.
@pytest.mark.parametrize(
    "path, dtype",
    [("sdpa", torch.float32), ("sdpa", torch.bfloat16), ("triton", torch.float32), ("triton", torch.float16)],
)
def test_decode_attention_matches_sdpa_over_expanded_heads(path, dtype, tmp_path):
    """Both decode paths (grouped SDPA off CUDA, the Triton kernel on CUDA) equal SDPA over K/V
    expanded to every query head with slots past each row's position masked out: across the
    kernel's block boundaries (16 slots here), and with cache rows beyond the batch."""
    torch.manual_seed(0)
    bsz, length, n_heads, n_kv, head_dim = 4, 40, 4, 2, 8
    q = torch.randn(bsz, 1, n_heads, head_dim).to(dtype)
    keys, values = (torch.randn(bsz + 2, length, n_kv, head_dim).to(dtype) for _ in range(2))
    positions = torch.tensor([[0], [15], [16], [39]])
    if path == "sdpa":
        out = grouped_sdpa_decode(q, keys[:bsz], values[:bsz], positions)
    else:
        out = run_kernel(
            tmp_path, "titan_conformance.model.decode_kernel:launch_decode_attention",
            q, keys, values, positions, head_dim**-0.5, block_l=16,
        )
    visible = torch.arange(length).view(1, 1, -1) <= positions.unsqueeze(-1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.double().transpose(1, 2),
        _expand_kv(keys[:bsz].double().transpose(1, 2), 2),
        _expand_kv(values[:bsz].double().transpose(1, 2), 2),
        attn_mask=visible.unsqueeze(1),
    ).transpose(1, 2)
    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    # Row 0 sees slot 0 only: its output is exactly that slot's value.
    torch.testing.assert_close(out[0, 0].double(), _expand_kv(values[:1, :1].transpose(1, 2), 2)[0, :, 0].double())


@pytest.mark.parametrize(
    "vocab, temperature, dtype",
    [(5000, 0.7, torch.float32), (100, 1.0, torch.float32), (5000, 0.0, torch.float32), (5000, 1.0, torch.bfloat16)],
)
def test_sampling_kernel_matches_pytorch(vocab, temperature, dtype, tmp_path):
    """The CUDA sampler draws the same tokens as the PyTorch path and reports their logprob under
    softmax(logits / T), across its vocabulary splits; ties go to the first index as torch.argmax;
    a NaN logit wins with a NaN logprob (as torch), so a broken generator stays visible; greedy
    (T = 0) is the plain argmax with the untempered logprob."""
    from titan_conformance.generator.sampling import sampling_tensors

    torch.manual_seed(0)
    logits = torch.randn(6, vocab) * 4
    logits[0, 7] = logits[0, vocab - 3] = logits[0].max() + 50  # a tie far above the noise
    logits[1, [vocab // 2, 3]] = float("nan")  # NaN wins, first index first, logprob NaN: as torch
    logits = logits.to(dtype)
    noise = gumbel_noise((6, vocab), torch.Generator().manual_seed(1))
    noise[0, vocab - 3] = noise[0, 7]
    divisor, scale = sampling_tensors(temperature, torch.device("cpu"))
    tokens, logp = run_kernel(
        tmp_path, "titan_conformance.generator.sampling_kernel:launch_sample", logits, noise, divisor, scale
    )
    expected_tokens, expected_logp = sample_tokens(logits, noise, divisor, scale)
    assert tokens.dtype == torch.int64 and tokens.tolist() == expected_tokens.tolist()
    assert tokens[0] == 7 and tokens[1] == 3 and logp[1].isnan() and expected_logp[1].isnan()
    tokens, logp, expected_logp = tokens[2:], logp[2:], expected_logp[2:]
    logits = logits[2:]
    if temperature == 0:
        assert tokens.tolist() == logits.argmax(-1).tolist()
    reference = torch.log_softmax(logits.double() / divisor.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp.double(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(expected_logp.double(), reference, atol=1e-5, rtol=1e-5)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_decode_attention_on_cuda_at_the_qwen3_shape():
    """The compiled kernel itself (not the interpreter), bf16 at batch 40 with positions spread over
    a 128-slot cache, against the fp64 reference."""
    from titan_conformance.model.decode_kernel import launch_decode_attention

    torch.manual_seed(0)
    q = torch.randn(40, 1, 16, 128, device="cuda", dtype=torch.bfloat16)
    keys, values = (torch.randn(48, 128, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    positions = torch.randint(0, 128, (40, 1), device="cuda")
    out = launch_decode_attention(q, keys, values, positions, 128**-0.5)
    expected = grouped_sdpa_decode(q.double(), keys[:40].double(), values[:40].double(), positions)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


@cuda
def test_sampling_kernel_on_cuda_at_the_qwen3_vocabulary():
    torch.manual_seed(0)
    logits = (torch.randn(40, 151936, device="cuda") * 3).to(torch.bfloat16)
    noise = gumbel_noise((40, 151936), torch.Generator(device="cuda").manual_seed(0))
    divisor, scale = torch.tensor(0.8, device="cuda"), torch.tensor(1.0, device="cuda")
    from titan_conformance.generator.sampling_kernel import launch_sample

    tokens, logp = launch_sample(logits, noise, divisor, scale)
    x = logits.double() / 0.8
    assert tokens.tolist() == (x + noise.double()).argmax(-1).tolist()
    torch.testing.assert_close(logp.double(), torch.log_softmax(x, -1).gather(-1, tokens[:, None])[:, 0], atol=1e-4, rtol=1e-4)
