import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from titan_conformance.errors import ConformanceError
from titan_conformance.data_files import fixture_path
from titan_conformance.model import Qwen3Model
from titan_conformance.model.checkpoint import load_checkpoint, read_model_args, save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(fixture_path("tiny-qwen3"), dst)
    return dst


def load(path):
    model = Qwen3Model(read_model_args(path))
    load_checkpoint(model, path)
    return model


def test_round_trip_through_safetensors(ckpt, tmp_path):
    model = load(ckpt)
    save_checkpoint(model, tmp_path / "again")
    again = load(tmp_path / "again")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]


def test_sharded_index_loads(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(ckpt / fname))
    (ckpt / "model.safetensors").unlink()
    weight_map = {n: f for f, part in halves.items() for n in part}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load(ckpt)
    torch.testing.assert_close(model.embed_tokens.weight, tensors["model.embed_tokens.weight"])


def expect_error(path, *fragments):
    with pytest.raises(ConformanceError) as info:
        load(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message  # one paragraph
    return message


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "does not exist")


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    expect_error(ckpt, "neither model.safetensors")


def test_corrupt_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    expect_error(ckpt, "config.json", "not readable JSON")


def test_unsupported_architecture(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(ckpt, "unsupported architecture", "LlamaForCausalLM")


def rewrite(ckpt, change):
    tensors = load_file(str(ckpt / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def test_missing_tensor(ckpt):
    rewrite(ckpt, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    expect_error(ckpt, "'model.layers.2.mlp.up_proj.weight' is missing")


def test_unexpected_tensor(ckpt):
    rewrite(ckpt, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)}))
    expect_error(ckpt, "unexpected tensor 'model.layers.9.mlp.up_proj.weight'", "model.safetensors")


def test_shape_mismatch(ckpt):
    rewrite(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(7)}))
    expect_error(ckpt, "'model.norm.weight' has shape (7,)", "expects (128,)")


def test_truncated_file(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(ckpt, "model.safetensors", "truncated or corrupt")


def test_garbage_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    expect_error(ckpt, "truncated or corrupt")
