import json

import pytest
import torch
from safetensors.torch import load_file

from reference_qwen3 import reference_logits
from titan_conformance.data_files import fixture_path
from titan_conformance.model import Qwen3Model
from titan_conformance.model.checkpoint import load_checkpoint, read_model_args

TOKENS = [1, 9, 4, 12, 7, 3, 5, 6, 4, 8, 11]


@pytest.fixture(scope="module")
def fixture_model():
    path = fixture_path("tiny-qwen3")
    model = Qwen3Model(read_model_args(path))
    load_checkpoint(model, path)
    return model, load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())


def test_float64_forward_matches_independent_reference(fixture_model):
    model, tensors, cfg = fixture_model
    expected = reference_logits(tensors, cfg, TOKENS)
    got = model.to(torch.float64)(torch.tensor([TOKENS]))[0]
    model.to(torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_float32_and_bfloat16_forward_close_to_float64_reference(fixture_model):
    model, tensors, cfg = fixture_model
    expected = reference_logits(tensors, cfg, TOKENS)
    got32 = model(torch.tensor([TOKENS]))[0].double()
    assert (got32 - expected).abs().max() < 1e-4
    got16 = model.to(torch.bfloat16)(torch.tensor([TOKENS]))[0].double()
    model.to(torch.float32)
    assert (got16 - expected).abs().max() < 0.3  # bf16 has 8 mantissa bits


def test_reference_catches_wrong_rope_theta(fixture_model):
    """The comparison above is a real check: a model with another RoPE base fails it."""
    model, tensors, cfg = fixture_model
    wrong = Qwen3Model(model.args.replace(rope_theta=10_000.0))
    wrong.load_state_dict(model.state_dict())
    diff = (wrong(torch.tensor([TOKENS]))[0].double() - reference_logits(tensors, cfg, TOKENS)).abs().max()
    assert diff > 1e-3


def test_tied_embeddings_use_embedding_as_output(fixture_model):
    model, _, _ = fixture_model
    tied = Qwen3Model(model.args.replace(tie_word_embeddings=True))
    assert tied.lm_head is None and "lm_head.weight" not in dict(tied.named_parameters())
    tokens = torch.tensor([TOKENS])
    torch.testing.assert_close(tied(tokens), tied.hidden_states(tokens) @ tied.embed_tokens.weight.T)


def test_fused_projections_match_reference_and_follow_weight_writes():
    """The generator's stacked q/k/v and gate/up weights: same logits as the independent reference
    (float64, exactly as the unfused model), and the per-projection parameters stay views of the
    stacks, so a weight sync by name reaches the GEMM that the blocks run."""
    path = fixture_path("tiny-qwen3")
    tensors, cfg = load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())
    model = Qwen3Model(read_model_args(path)).to(torch.float64).requires_grad_(False)
    model.fuse_projections()
    load_checkpoint(model, path)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == mlp.gate_up_weight.untyped_storage().data_ptr()
    assert "layers.0.self_attn.qkv_weight" not in model.state_dict()  # checkpoint layout unchanged
    expected = reference_logits(tensors, cfg, TOKENS)
    torch.testing.assert_close(model(torch.tensor([TOKENS]))[0], expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        attn.v_proj.weight.zero_()  # as a weight sync writes: in place, by name
    assert attn.qkv_weight[-attn.v_proj.out_features :].abs().max() == 0
    assert (model(torch.tensor([TOKENS]))[0] - expected).abs().max() > 1e-3
    trainable = Qwen3Model(read_model_args(path))
    with pytest.raises(ValueError, match="frozen, unsharded"):  # a trainer's would lose its gradients
        trainable.fuse_projections()
