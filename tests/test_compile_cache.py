"""The compile cache kept between runs (`--tc-compile-cache`): a fresh process with an empty
Inductor cache directory restores the file and compiles nothing; a file it cannot use or write is a
warning and a cold start, never a failed gate."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from titan_conformance.checks.budgets import compile_warmth
from titan_conformance.compilation.cache import (
    KEY_VARIABLE, MAGIC, CompileCacheUse, check_cache_path, restore_compile_cache, save_compile_cache,
)
from titan_conformance.compilation.triton_kernels import (
    compiled_kernels, pack_kernels, read_kernels, unpack_kernels,
)

# One process of a CI job: restore the file (if any), compile, save, report the cache counters.
_JOB = """
import json, sys, torch
from pathlib import Path
from titan_conformance.compilation.cache import (
    compile_cache_counters, restore_compile_cache, restored_inductor_code, save_compile_cache,
)
from titan_conformance.model import ModelArgs, Qwen3Model
from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile

path = Path(sys.argv[1])
use = restore_compile_cache(path)
model = Qwen3Model(ModelArgs(vocab_size=16, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, hidden_dim=32))
apply_regional_compile(model, CompileConfig(), CompileLedger(), role="job")
model(torch.randint(0, 16, (2, 5)))
save_compile_cache(path, use)
print(json.dumps({"restored": use.restored_bytes, "saved": use.saved_bytes, "restored_code": restored_inductor_code(),
                  "authenticated": use.authenticated, **compile_cache_counters()}))
"""

# A GPU job whose only compiled code is our sampler's Triton kernels, which Inductor's blob lacks.
_KERNEL_JOB = """
import json, sys, torch
from pathlib import Path
from titan_conformance.compilation.cache import restore_compile_cache, save_compile_cache
from titan_conformance.generator.sampling import warm_up_sampler
from titan_conformance.profile import SamplingSpec

path = Path(sys.argv[1])
use = restore_compile_cache(path)
warm_up_sampler(64, torch.float32, torch.device("cuda"), SamplingSpec())
torch.cuda.synchronize()
save_compile_cache(path, use)
print(json.dumps({"restored": use.restored_kernels, "saved": use.saved_kernels, "problem": use.problem}))
"""


def _job(cache_file, tmp_path, name, script=_JOB):
    # A fresh Inductor/Triton cache directory per job, as on a new runner: only the file carries over,
    # signed with the CI secret.
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / f"inductor-{name}"),
               TRITON_CACHE_DIR=str(tmp_path / f"triton-{name}"), **{KEY_VARIABLE: "ci-secret"})
    proc = subprocess.run([sys.executable, "-c", script, str(cache_file)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_restored_cache_makes_a_fresh_runner_compile_nothing(tmp_path):
    cache_file = tmp_path / "ci-cache" / "compile.bin"
    cold = _job(cache_file, tmp_path, "cold")
    assert cold["restored"] == 0 and cold["saved"] > 0 and cold["fxgraph_cache_miss"] >= 1
    assert not cold["restored_code"]  # a cold start warms Inductor's compile pool
    assert compile_warmth(cold) == "cold compile"
    warm = _job(cache_file, tmp_path, "warm")
    assert 0 < warm["restored"] < cold["saved"] and warm["restored_code"]  # no compile pool warmed for it
    assert warm["authenticated"]  # signed by the cold job, verified by the warm one
    assert warm["fxgraph_cache_miss"] == 0 and warm["fxgraph_cache_hit"] == cold["fxgraph_cache_miss"], warm
    assert compile_warmth(warm).endswith("Inductor graphs from cache")
    assert not list(cache_file.parent.glob(".compile.bin.*"))  # the atomic write left no temp file


def test_an_unusable_cache_file_is_a_cold_start_not_a_failed_gate(tmp_path, caplog, monkeypatch):
    """A corrupt file, or one another torch wrote, must not fail a PR for a reason unrelated to it:
    the run compiles cold, says why, and the save after startup replaces the file."""
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    bad = tmp_path / "compile.bin"
    bad.write_bytes(MAGIC + b"\na truncated blob")  # ours, unsigned, but damaged
    use = restore_compile_cache(bad)
    assert use.restored_bytes == 0 and "not restored" in use.problem and "compile.bin" in caplog.text
    assert restore_compile_cache(tmp_path / "absent.bin") == CompileCacheUse()
    older = tmp_path / "older.bin"  # an earlier format of ours: replaced, never refused
    older.write_bytes(MAGIC.replace(b" 3\n", b" 2\n") + b"a blob")  # version 2: no tag line
    check_cache_path(older)
    assert "another version of titan_conformance" in restore_compile_cache(older).problem
    cache_file = tmp_path / "job" / "compile.bin"
    cache_file.parent.mkdir()
    cache_file.write_bytes(MAGIC + b"\na truncated blob")
    job = _job(cache_file, tmp_path, "after-corrupt")
    assert job["restored"] == 0 and job["saved"] > 0 and job["fxgraph_cache_miss"] >= 1 and not job["restored_code"]


def test_an_unwritable_cache_file_is_reported_not_raised(tmp_path):
    use = CompileCacheUse()
    target = tmp_path / "is-a-directory"
    target.mkdir()
    torch.compile(lambda x: x * 2)(torch.ones(3))  # something to save
    save_compile_cache(target, use)
    assert use.saved_bytes == 0 and "not saved" in use.problem
    assert not list(tmp_path.glob(".is-a-directory.*"))  # no temp file left behind


def _kernel_groups(triton_dir):
    """The kernels in a Triton cache directory: one `__grp__` file per compiled kernel."""
    return sorted(p.parent.name for p in triton_dir.glob("*/__grp__*.json"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels compile for CUDA")
def test_a_restored_cache_brings_the_custom_ops_triton_kernels(tmp_path):
    """The sampler's kernels are launched by a custom op, not generated by Inductor, so torch's blob
    lacks them: the file carries them, and a fresh runner launches them without compiling."""
    cache_file = tmp_path / "compile.bin"
    cold = _job(cache_file, tmp_path, "cold", _KERNEL_JOB)
    assert cold["restored"] == 0 and cold["saved"] >= 1, cold
    warm = _job(cache_file, tmp_path, "warm", _KERNEL_JOB)
    assert warm["restored"] == warm["saved"] == cold["saved"] and not warm["problem"], warm
    # a kernel Triton compiled instead of finding would have a group of its own beside the restored ones
    assert _kernel_groups(tmp_path / "triton-warm") == _kernel_groups(tmp_path / "triton-cold")


def test_triton_cache_entries_survive_the_round_trip_through_the_file(tmp_path, monkeypatch):
    """Entries written through Triton's own cache manager, packed, then put into another runner's
    empty cache directory, where Triton's lookup (`get_group`) finds them; present ones stay."""
    from triton.runtime.cache import get_cache_manager

    files = {"k.cubin": b"\x7fELF binary", "k.ptx": b"// ptx", "k.json": b'{"name": "k"}'}
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "runner-a"))
    manager = get_cache_manager("0123abcd")
    group = {name: manager.put(data, name, binary=True) for name, data in files.items()}
    manager.put_group("k.json", group)
    archive_path = tmp_path / "kernels.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        assert pack_kernels(archive, {"0123abcd": group, "gone": {"x.json": str(tmp_path / "missing")}}) == 1
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "runner-b"))
    with zipfile.ZipFile(archive_path) as archive:
        kernels = read_kernels(archive)
    assert unpack_kernels(kernels) == 1
    found = get_cache_manager("0123abcd").get_group("k.json")
    assert found and {n: Path(p).read_bytes() for n, p in found.items()} == files
    assert all(str(tmp_path / "runner-b") in p for p in found.values())
    assert unpack_kernels(kernels) == 0  # already there: left as it is


def test_an_odd_object_in_sys_modules_does_not_break_the_save(monkeypatch):
    """The kernels are found by walking sys.modules, where a library may park any object: one that
    cannot show its attributes holds no kernel of ours and must not fail the save."""

    class Unreadable:
        @property
        def __dict__(self):
            raise RuntimeError("no attributes here")

    found = compiled_kernels()
    monkeypatch.setitem(sys.modules, "an_odd_module", Unreadable())
    assert compiled_kernels() == found


def test_the_save_writes_through_a_symlink(tmp_path, monkeypatch):
    """A CI cache step may restore the file as a link: the save replaces its target, not the link."""
    target, link = tmp_path / "store" / "cache.bin", tmp_path / "cache.bin"
    target.parent.mkdir()
    link.symlink_to(target)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"blob", None))
    monkeypatch.setattr("titan_conformance.compilation.cache.compiled_kernels", lambda: {})
    save_compile_cache(link, CompileCacheUse())
    assert link.is_symlink() and target.read_bytes().startswith(MAGIC)
