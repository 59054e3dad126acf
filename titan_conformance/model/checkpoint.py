"""HF-layout checkpoints: `config.json` + `model.safetensors` (or a sharded index).

Every failure is a ConformanceError naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from titan_conformance.errors import ConformanceError
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.qwen3 import Qwen3Model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def hf_name(param_name: str) -> str:
    """Our parameter name -> the HF Qwen3 tensor name."""
    return param_name if param_name.startswith("lm_head.") else f"model.{param_name}"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConformanceError(
            f"{path} does not exist. A checkpoint directory must hold config.json and "
            f"{SINGLE_FILE} (or {INDEX_FILE} with its shards), in the HF layout."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConformanceError(f"{path} is not readable JSON ({e}); re-download or re-export it.") from None
    if not isinstance(data, dict):
        raise ConformanceError(
            f"{path} holds a JSON {type(data).__name__}, not an object of keys; it is not an HF {path.name}: "
            "re-download or re-export the checkpoint."
        )
    return data


def read_model_args(ckpt_dir: str | Path) -> ModelArgs:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ConformanceError(
            f"Checkpoint directory {ckpt_dir} does not exist. Pass an HF-layout directory "
            "(config.json + model.safetensors), e.g. a downloaded Qwen3-0.6B."
        )
    path = ckpt_dir / "config.json"
    return ModelArgs.from_hf_config(_read_json(path), source=str(path))


def _shard_map(ckpt_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file that holds it."""
    index = ckpt_dir / INDEX_FILE
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConformanceError(f"{index} has no 'weight_map' object; re-export the checkpoint.")
        return {name: ckpt_dir / fname for name, fname in weight_map.items()}
    single = ckpt_dir / SINGLE_FILE
    if not single.exists():
        raise ConformanceError(
            f"{ckpt_dir} holds neither {SINGLE_FILE} nor {INDEX_FILE}; the weights are missing."
        )
    try:
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ConformanceError(
            f"{single} is not a readable safetensors file ({e}); it may be truncated or corrupt — "
            "re-download or re-export it."
        ) from None


def _first(names: list[str]) -> str:
    return repr(names[0]) + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def load_checkpoint(model: Qwen3Model, ckpt_dir: str | Path) -> None:
    """Copies every tensor of an HF Qwen3 checkpoint into `model` in place (dtype converted)."""
    ckpt_dir = Path(ckpt_dir)
    expected = {hf_name(n): p for n, p in model.named_parameters()}
    shards = _shard_map(ckpt_dir)
    if unexpected := sorted(set(shards) - set(expected)):
        raise ConformanceError(
            f"{shards[unexpected[0]]}: unexpected tensor {_first(unexpected)} that the Qwen3 model "
            "built from config.json does not have; the checkpoint and its config.json disagree (e.g. "
            "tie_word_embeddings or num_hidden_layers)."
        )
    if missing := sorted(set(expected) - set(shards)):
        raise ConformanceError(
            f"{ckpt_dir}: tensor {_first(missing)} is missing; the checkpoint is incomplete or does "
            "not match its config.json."
        )
    with torch.no_grad():
        for path, name, tensor in _read_tensors(shards):
            param = expected[name]
            if tensor.is_floating_point() != param.is_floating_point():
                raise ConformanceError(
                    f"{path}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')} where the model's weight is "
                    f"{str(param.dtype).removeprefix('torch.')}: a checkpoint's weights are floating point; the file was "
                    "written wrongly (e.g. token ids saved in place of a weight): re-export it."
                )
            if tensor.shape != param.shape:
                raise ConformanceError(
                    f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but the model built "
                    f"from config.json expects {tuple(param.shape)}; the weights and config.json disagree."
                )
            param.copy_(tensor)


def read_checkpoint(ckpt_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, every tensor by HF name) of an HF-layout checkpoint, single file or sharded."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ConformanceError(f"Checkpoint directory {ckpt_dir} does not exist. Pass an HF-layout directory.")
    config = _read_json(ckpt_dir / "config.json")
    return config, {name: tensor for _, name, tensor in _read_tensors(_shard_map(ckpt_dir))}


def _read_tensors(shards: dict[str, Path]) -> Iterator[tuple[Path, str, torch.Tensor]]:
    by_file: dict[Path, list[str]] = {}
    for name, path in shards.items():
        by_file.setdefault(path, []).append(name)
    for path, names in sorted(by_file.items()):
        try:
            with safe_open(path, framework="pt") as f:
                for name in names:
                    yield path, name, f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ConformanceError(
                f"{path} is not a readable safetensors file ({e}); it may be truncated or "
                "corrupt — re-download or re-export it."
            ) from None


def save_checkpoint(model: Qwen3Model, ckpt_dir: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """Writes config.json + model.safetensors atomically (a temp dir renamed into place)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt_dir.name}-", dir=ckpt_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    tensors = {hf_name(n): p.detach().to("cpu", dtype).contiguous() for n, p in model.named_parameters()}
    save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
    config = model.args.to_hf_config(torch_dtype=str(dtype).removeprefix("torch."))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / SINGLE_FILE).chmod(0o644)
    if ckpt_dir.exists():
        for child in ckpt_dir.iterdir():
            if child.name in (SINGLE_FILE, "config.json"):
                child.unlink()
        for child in tmp.iterdir():
            os.replace(child, ckpt_dir / child.name)
        tmp.rmdir()
    else:
        os.replace(tmp, ckpt_dir)
