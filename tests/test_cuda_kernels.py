"""The generator's Triton kernels (cache attention, sampling) against PyTorch references.

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

from titan_conformance.model.attention import _expand_kv
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


def expected_cache_attention(q, k_cache, v_cache, slots):
    """fp64 SDPA of each query over its own cache row, K/V expanded to every query head, slots past
    its position masked out."""
    length, n_rep = k_cache.shape[1], q.shape[1] // k_cache.shape[2]
    rows, last = slots // length, slots % length
    keys, values = (_expand_kv(c[rows].double().transpose(1, 2), n_rep) for c in (k_cache, v_cache))  # [N, H, L, D]
    visible = (torch.arange(length) <= last.cpu().unsqueeze(-1)).to(q.device).view(-1, 1, 1, length)
    out = torch.nn.functional.scaled_dot_product_attention(q.double().unsqueeze(2), keys, values, attn_mask=visible)
    return out.squeeze(2)


# Triton's interpreter computes bf16 dot products wrongly on the CPU (fp16 is right), so the kernel's
# half-precision case runs in fp16 here.
@pytest.mark.parametrize(
    "path, dtype, tokens_per_program, heads",
    [
        ("sdpa", torch.float32, None, (4, 2, 8)), ("sdpa", torch.bfloat16, None, (4, 2, 8)),
        ("triton", torch.float32, 1, (4, 2, 8)), ("triton", torch.float32, 3, (4, 2, 8)),
        ("triton", torch.float16, 32, (4, 2, 8)), ("triton", torch.float32, None, (6, 2, 48)),
        ("triton", torch.float32, 2, (2, 2, 8)),
    ],
)
def test_cache_attention_matches_sdpa_over_expanded_heads(path, dtype, tokens_per_program, heads, tmp_path, monkeypatch):
    """Both paths (gathered SDPA off CUDA, the Triton kernel on CUDA) equal SDPA over K/V expanded
    to every query head: decode-like and prefill-like queries mixed (several tokens of one row),
    rows in any order, positions across the kernel's block boundaries (16 slots here) and cache
    rows no token uses. The kernel runs a token per program (decode), tiles that split a row's
    tokens and mix rows, one tile for all (also as it chooses: more tokens than cache rows), groups
    of 3 heads padded to 4 with a head_dim padded to 64, and groups of 1; the SDPA path takes its
    queries in chunks of 3."""
    torch.manual_seed(0)
    length, (n_heads, n_kv, head_dim) = 40, heads
    rows = torch.tensor([2, 0, 0, 0, 5, 3, 1])
    positions = torch.tensor([0, 13, 14, 15, 16, 39, 7])
    slots = rows * length + positions
    q = torch.randn(len(slots), n_heads, head_dim).to(dtype)
    k_cache, v_cache = (torch.randn(6, length, n_kv, head_dim).to(dtype) for _ in range(2))
    if path == "sdpa":
        from titan_conformance.model import cache_attention

        monkeypatch.setattr(cache_attention, "GATHER_ELEMENTS", 3 * length * n_kv * head_dim)
        out = cache_attention.sdpa_cache_attention(q, k_cache, v_cache, slots, head_dim**-0.5)
    else:
        out = run_kernel(
            tmp_path, "titan_conformance.model.cache_attention_kernel:launch_cache_attention",
            q, k_cache, v_cache, slots, head_dim**-0.5, block_l=16, tokens_per_program=tokens_per_program,
        )
    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), expected_cache_attention(q, k_cache, v_cache, slots), atol=tol, rtol=tol)
    # Row 2 at position 0 sees slot 0 only: its output is exactly that slot's value.
    torch.testing.assert_close(out[0].double(), v_cache[2, 0].repeat_interleave(n_heads // n_kv, dim=0).double())


@pytest.mark.parametrize("tokens_per_program", [1, 32])
def test_cache_attention_keeps_non_finite_values_to_their_row(tokens_per_program, tmp_path):
    """Slots no query sees are NaN, and one row's visible slot holds inf: every other row's output
    is finite and correct, also when one tile holds tokens of every row."""
    torch.manual_seed(0)
    length, n_heads, n_kv, head_dim = 24, 4, 2, 8
    rows = torch.tensor([0, 0, 1, 1, 1, 3])
    positions = torch.tensor([4, 5, 0, 1, 2, 20])
    slots = rows * length + positions
    q = torch.randn(len(slots), n_heads, head_dim)
    k_cache, v_cache = (torch.full((4, length, n_kv, head_dim), float("nan")) for _ in range(2))
    for row, last in ((0, 5), (1, 2), (3, 20)):
        k_cache[row, : last + 1], v_cache[row, : last + 1] = torch.randn(2, last + 1, n_kv, head_dim)
    v_cache[1, 2] = float("inf")  # seen by row 1's token at position 2 only
    out = run_kernel(
        tmp_path, "titan_conformance.model.cache_attention_kernel:launch_cache_attention",
        q, k_cache, v_cache, slots, head_dim**-0.5, block_l=16, tokens_per_program=tokens_per_program,
    )
    others = torch.tensor([0, 1, 5])  # rows 0 and 3
    assert out[others].isfinite().all()
    finite = [torch.nan_to_num(c, nan=0.0, posinf=0.0) for c in (k_cache, v_cache)]  # what they see is finite
    torch.testing.assert_close(
        out[others].double(), expected_cache_attention(q, *finite, slots)[others], atol=1e-6, rtol=1e-6
    )


def test_cache_attention_op_registration():
    """The custom op's schema, fake (meta) kernel and dynamic-shape tracing agree with its eager
    kernel (torch.library.opcheck), so Inductor keeps it as one call with the right output."""
    torch.manual_seed(0)
    q = torch.randn(5, 4, 8)
    k_cache, v_cache = (torch.randn(3, 16, 2, 8) for _ in range(2))
    slots = torch.tensor([0, 17, 18, 40, 47])
    torch.library.opcheck(torch.ops.titan_conformance.cache_attention.default, (q, k_cache, v_cache, slots, 8**-0.5))


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
    from titan_conformance.profile import SamplingSpec

    torch.manual_seed(0)
    logits = torch.randn(6, vocab) * 4
    logits[0, 7] = logits[0, vocab - 3] = logits[0].max() + 50  # a tie far above the noise
    logits[1, [vocab // 2, 3]] = float("nan")  # NaN wins, first index first, logprob NaN: as torch
    logits = logits.to(dtype)
    noise = gumbel_noise((6, vocab), torch.Generator().manual_seed(1))
    noise[0, vocab - 3] = noise[0, 7]
    knobs = sampling_tensors(SamplingSpec(temperature=temperature), torch.device("cpu"))
    divisor, scale = knobs[:2]
    tokens, logp = run_kernel(
        tmp_path, "titan_conformance.generator.sampling_kernel:launch_sample", logits, noise, divisor, scale
    )
    expected_tokens, expected_logp = sample_tokens(logits, noise, knobs, SamplingSpec(temperature=temperature))
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
@pytest.mark.parametrize("batch, tokens_per_row", [(40, 1), (40, 5), (8, 100)])
def test_cache_attention_on_cuda_at_the_qwen3_shape(batch, tokens_per_row):
    """The compiled kernel itself (not the interpreter), bf16 over a 128-slot cache with rows beyond
    the batch, against the fp64 reference: a decode step at batch 40 (a token per program), and
    prefills of 40 x 5 and 8 x 100 tokens at positions 0.. (tiles of tokens)."""
    from titan_conformance.model.cache_attention_kernel import launch_cache_attention

    torch.manual_seed(0)
    n = batch * tokens_per_row
    q = torch.randn(n, 16, 128, device="cuda", dtype=torch.bfloat16)
    k_cache, v_cache = (torch.randn(48, 128, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    rows = torch.arange(batch, device="cuda").repeat_interleave(tokens_per_row)
    if tokens_per_row == 1:
        positions = torch.randint(0, 128, (n,), device="cuda")
    else:
        positions = torch.arange(tokens_per_row, device="cuda").repeat(batch)
    slots = rows * 128 + positions
    out = launch_cache_attention(q, k_cache, v_cache, slots, 128**-0.5)
    torch.testing.assert_close(out.double(), expected_cache_attention(q, k_cache, v_cache, slots), atol=2e-2, rtol=2e-2)


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
