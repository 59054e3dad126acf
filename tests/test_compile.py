import torch

from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile
from titan_conformance.model import ModelArgs, Qwen3Model

ARGS = ModelArgs(dim=64, n_heads=2, n_kv_heads=1, head_dim=32, hidden_dim=128, vocab_size=16)


def compiled_forward_backward(n_layers: int, ledger: CompileLedger, shapes) -> None:
    model = Qwen3Model(ARGS.replace(n_layers=n_layers))
    apply_regional_compile(model, CompileConfig(recompile_limit=8), ledger, role=f"layers{n_layers}")
    for bsz, seq in shapes:
        model(torch.randint(0, 16, (bsz, seq))).sum().backward()


def test_one_graph_serves_every_layer():
    """Unique compiled graphs do not grow with depth: 2 and 6 layers compile exactly once each."""
    with CompileLedger() as ledger:
        compiled_forward_backward(2, ledger, [(3, 5), (4, 9), (2, 7)])
        compiled_forward_backward(6, ledger, [(3, 5), (4, 9), (2, 7)])
    assert ledger.counts() == {"layers2.TransformerBlock": 1, "layers6.TransformerBlock": 1}, ledger.format()


def test_ledger_records_recompiles_with_reason_and_limit_hits():
    """A shape change the dynamic graph cannot serve (batch 1 specializes) is a recompile with its
    guard failure; past recompile_limit the ledger records the hit."""
    with CompileLedger() as ledger:
        model = Qwen3Model(ARGS.replace(n_layers=2))
        apply_regional_compile(model, CompileConfig(recompile_limit=2, fullgraph=False), ledger, "probe")
        for bsz, seq in [(3, 5), (1, 7), (2, 1)]:
            model(torch.randint(0, 16, (bsz, seq)))
    assert ledger.counts() == {"probe.TransformerBlock": 2}, ledger.format()
    assert ledger.events[0].reason == "first compilation"
    assert "x.size()[0]" in ledger.events[1].reason
    assert ledger.limit_hits == [  # with the guard failure it could not compile for
        "probe.TransformerBlock: hit recompile_limit=2 (last reason: tensor 'x' size mismatch at index 0. "
        "expected 1, actual 2)"
    ]


def test_roles_have_separate_budgets():
    """Trainer and generator are separate processes in a real deployment; here each role gets its
    own code object, so one role's compiles never count against another's limit."""
    with CompileLedger() as ledger:
        for role in ("a", "b"):
            model = Qwen3Model(ARGS.replace(n_layers=2))
            apply_regional_compile(model, CompileConfig(recompile_limit=1), ledger, role)
            model(torch.randint(0, 16, (3, 5)))
    assert ledger.counts() == {"a.TransformerBlock": 1, "b.TransformerBlock": 1}
    assert ledger.limit_hits == []


def test_generator_compiles_once_for_prefill_decode_batch_one_and_graph_inputs():
    """The generator's blocks see one flat row of tokens, so prefill and decode are one shape class;
    a one-token step is padded to two (Dynamo specializes a size of 1); generate() and a captured
    graph feed the decode step differently (a step's positions vs static buffers, its cache slots
among them), and a view among
    the block's inputs would guard on its base. One compile for all of it."""
    from titan_conformance.generator.base import GeneratorConfig
    from titan_conformance.generator.qwen3 import qwen3_generator
    from titan_conformance.generator.sampling import sampling_tensors
    from titan_conformance.profile import SamplingSpec

    with CompileLedger() as ledger:
        config = GeneratorConfig(max_num_seqs=4, max_model_len=16, device=torch.device("cpu"))
        gen = qwen3_generator(ARGS.replace(n_layers=2), config=config, compile_config=CompileConfig(), ledger=ledger,
                              dtype=torch.float32)
        gen.model.init_weights(0)
        gen.generate([[1, 2, 3], [4, 5]], n=2, max_tokens=3, sampling=SamplingSpec(), seed=0, eos_id=0)
        static = (torch.zeros(4, 1, dtype=torch.long), torch.full((4, 1), 5), torch.zeros(4, 16))
        gen.decode_step(*static, *sampling_tensors(SamplingSpec(), torch.device("cpu")), torch.full((1, 4), gen.scratch_slot))
        done = gen.generate([[7]], n=1, max_tokens=4, sampling=SamplingSpec(), seed=0, eos_id=-1)
        gen.score(done, SamplingSpec())
    assert ledger.counts() == {"generator.TransformerBlock": 1}, ledger.format()


def test_compile_config_check_catches_an_eagerly_run_generator():
    from titan_conformance.checks.compile_config import compile_config_verdict

    ledger = CompileLedger()
    apply_regional_compile(Qwen3Model(ARGS), CompileConfig(), ledger, role="trainer")
    apply_regional_compile(Qwen3Model(ARGS), CompileConfig(enable=False), ledger, role="generator")
    verdict = compile_config_verdict(ledger)
    assert not verdict.passed and "enable False vs True" in verdict.message
    ledger = CompileLedger()
    for role in ("trainer", "generator"):
        apply_regional_compile(Qwen3Model(ARGS), CompileConfig(), ledger, role=role)
    assert compile_config_verdict(ledger).passed
