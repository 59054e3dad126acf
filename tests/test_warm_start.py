"""The warm start: the generator's first forward waits for it; background warm-ups that fail are a
warning, not an error; on a GPU it compiles exactly the kernel variants the generator then launches
(none is compiled again)."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.compilation import warm_start
from titan_conformance.compilation.warm_start import WarmStart, start_warm_start
from titan_conformance.generator import qwen3
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.native import NativeGenerator
from titan_conformance.generator.qwen3 import qwen3_generator
from titan_conformance.model import ModelArgs

TINY = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, hidden_dim=64, vocab_size=40)
from titan_conformance.profile import CudagraphMode, SamplingSpec

CPU_CONFIG = GeneratorConfig(max_num_seqs=2, max_model_len=16, device=torch.device("cpu"))


def test_failed_warm_up_is_a_warning_and_the_others_still_run():
    ran = []

    def broken_kernel():
        raise RuntimeError("ptxas died")

    warm = WarmStart(torch.device("cpu"), [lambda: ran.append(1), broken_kernel, lambda: ran.append(2)])
    with pytest.warns(UserWarning, match="broken_kernel: RuntimeError: ptxas died.*first compile or launch"):
        warm.wait()
    assert ran == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warm.wait()  # warned once: a second wait (close after the first forward) is quiet


def cpu_generator(monkeypatch, warm_ups, **compile_changes) -> tuple[NativeGenerator, list[str]]:
    """A CPU generator whose warm start runs `warm_ups` (on CPU there is none otherwise), and the
    order in which warm-ups and forwards happened."""
    order: list[str] = []
    monkeypatch.setattr(qwen3, "start_warm_start", lambda device, backend, _: WarmStart(device, warm_ups(order)))
    gen = qwen3_generator(TINY, config=CPU_CONFIG, compile_config=CompileConfig(enable=False, **compile_changes),
                          ledger=CompileLedger(), dtype=torch.float32)
    forward = gen._forward
    gen._forward = lambda *flat: (order.append("forward"), forward(*flat))[1]
    return gen, order


def test_first_forward_waits_for_the_warm_start(monkeypatch):
    gen, order = cpu_generator(monkeypatch, lambda order: [lambda: (time.sleep(0.3), order.append("warm-up"))])
    gen.model.init_weights(0)
    gen.generate([[1, 2, 3]], 2, 3, SamplingSpec(), 0, eos_id=-1)
    assert order[:2] == ["warm-up", "forward"] and gen.warm_start is None


def test_failed_warm_up_warns_at_the_first_forward_and_generation_goes_on(monkeypatch):
    def broken(order):
        def sampler_warm_up():
            raise RuntimeError("out of resources")
        return [sampler_warm_up]

    gen, _ = cpu_generator(monkeypatch, broken)
    gen.model.init_weights(0)
    with pytest.warns(UserWarning, match="sampler_warm_up: RuntimeError: out of resources"):
        completions = gen.generate([[1, 2, 3]], 2, 3, SamplingSpec(), 0, eos_id=-1)
    assert [len(c.token_ids) for c in completions] == [3, 3]


def test_warm_start_off_starts_nothing(monkeypatch):
    gen, order = cpu_generator(monkeypatch, lambda order: [lambda: order.append("warm-up")], warm_start=False)
    assert gen.warm_start is None and order == []


def test_no_warm_start_off_cuda():
    assert start_warm_start(torch.device("cpu"), "inductor", [lambda: None]) is None
    gen = qwen3_generator(TINY, config=CPU_CONFIG, compile_config=CompileConfig(enable=False), ledger=CompileLedger(),
                          dtype=torch.float32)
    assert gen.warm_start is None


@pytest.mark.parametrize("restored", [False, True], ids=["cold", "cache-restored"])
def test_compile_pool_warms_only_when_graphs_will_compile(monkeypatch, restored):
    """Inductor's compile pool is started early for a cold start; with the compiled graphs restored
    it would only take cores from the weight load (Inductor's compiler is still imported early)."""
    pools = []
    monkeypatch.setattr(warm_start, "warm_inductor_workers", lambda: pools.append("started"))
    monkeypatch.setattr(warm_start, "restored_inductor_code", lambda: restored)
    monkeypatch.setattr(warm_start, "WarmStart", lambda device, warm_ups: warm_ups)  # no CUDA thread here
    warm_ups = start_warm_start(torch.device("cuda", 0), "inductor", [])
    assert pools == ([] if restored else ["started"])
    assert [w.args for w in warm_ups] == [("torch._inductor.compile_fx",)]


def _variants(kernel) -> int:
    """Compiled variants of a Triton kernel in this process (Triton keeps them per device)."""
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the warm start compiles CUDA kernels")
def test_warm_start_compiles_the_variants_the_generator_launches():
    from titan_conformance.generator import sampling_kernel
    from titan_conformance.model import cache_attention_kernel

    kernels = [cache_attention_kernel._cache_attention_kernel, sampling_kernel._partial_kernel, sampling_kernel._combine_kernel]
    # A head_dim, group and vocabulary of its own: no other test compiled these variants before.
    args = ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=48, hidden_dim=128, vocab_size=777)
    before = [_variants(k) for k in kernels]
    config = GeneratorConfig(max_num_seqs=4, max_model_len=32, device=torch.device("cuda"),
                             cudagraph_mode=CudagraphMode.FULL, capture_sizes=(1, 2, 4))
    gen = qwen3_generator(args, config=config, compile_config=CompileConfig(), ledger=CompileLedger(), dtype=torch.bfloat16)
    gen.wait_warm_start()
    warmed = [_variants(k) for k in kernels]
    assert [w - b for w, b in zip(warmed, before)] == [2, 1, 1]  # attention: a token per program; tiles
    gen.model.init_weights(0)
    gen.generate([[1, 2, 3], [4, 5]], 2, 4, SamplingSpec(), 0, eos_id=-1)
    gen.capture()
    gen.generate([[1, 2, 3]], 1, 4, SamplingSpec(), 1, eos_id=-1)
    assert [_variants(k) for k in kernels] == warmed, "a launch compiled a variant the warm start did not"
