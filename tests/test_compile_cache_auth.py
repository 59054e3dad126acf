"""A compile-cache file is code: torch unpickles its entries as it loads them and joins their keys
onto its cache folders. A file is loaded only once its HMAC verifies under `TC_COMPILE_CACHE_KEY`
(where the runner sets it) and none of its entries would be written outside its cache folder; a
refused file is a cold start with one paragraph saying why, and nothing of it reaches torch or Triton.
The crafted files are built in memory, in the format the tool writes."""

import builtins
import contextlib
import hashlib
import hmac
import io
import pickle
import zipfile
from types import SimpleNamespace

import pytest
import torch
from torch.compiler._cache import _serialize_single_cache
from torch.utils._appending_byte_serializer import AppendingByteSerializer

from titan_conformance.compilation.cache import (
    KEY_VARIABLE, MAGIC, UNAUTHENTICATED, CompileCacheUse, restore_compile_cache, save_compile_cache,
)


class _RunsCode:
    """Unpickled, it opens (so creates) `marker`: a stand-in for whatever a crafted pickle runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _runs_code(marker):
    """An Inductor artifact under a plain key whose content, unpickled, creates `marker`."""
    return "inductor", "fabcdefghij", pickle.dumps(_RunsCode(marker))


def _torch_blob(*artifacts):
    """torch.compile's blob as `save_cache_artifacts` writes it, holding (kind, key, content) artifacts."""
    serializer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    for kind, key, content in artifacts:
        serializer.append((kind, [SimpleNamespace(key=key, content=content)]))
    return serializer.to_bytes()


def _cache_file(path, members, secret=""):
    """A file in the tool's format (header, tag line, zip of `members`), signed if `secret` is given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    body = buffer.getvalue()
    tag = hmac.new(secret.encode(), MAGIC + body, hashlib.sha256).hexdigest().encode() if secret else b""
    path.write_bytes(MAGIC + tag + b"\n" + body)
    return path


@pytest.fixture(autouse=True)
def inductor_dir(tmp_path, monkeypatch):
    """This test's own Inductor cache folder (whatever a restore writes lands there) and no secret
    unless the test sets one."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    return tmp_path / "inductor"


@pytest.fixture(scope="module")
def compiled():
    """Something for `save_compile_cache` to write: one small graph compiled in this process."""
    torch.compile(lambda x: x * 2)(torch.ones(3))


def _refused(use, *words):
    assert use.restored_bytes == use.restored_kernels == 0
    assert not use.authenticated and not use.unauthenticated
    assert use.problem.startswith("not loaded: ") and "compiled cold" in use.problem, use.problem
    assert all(word in use.problem for word in words), use.problem
    assert "Traceback" not in use.problem and "\n" not in use.problem


def test_a_crafted_file_that_runs_code_is_refused_without_the_right_signature(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    blob = _torch_blob(_runs_code(marker))
    monkeypatch.setenv(KEY_VARIABLE, "the runner's secret")
    for secret, why in (("", "carries no HMAC-SHA256 tag"), ("another key", "tag does not match")):
        use = restore_compile_cache(_cache_file(tmp_path / "crafted.bin", {"torch.bin": blob}, secret))
        _refused(use, KEY_VARIABLE, why, "tampered with, written with another key, or written without one",
                 ", signed.")
    assert not marker.exists()
    with contextlib.suppress(Exception):  # what the refusal stood between: torch's loader runs the pickle
        torch.compiler.load_cache_artifacts(blob)
    assert marker.exists()


@pytest.mark.parametrize("key", [
    "{outside}", "../outside", "fx/../../outside", "C:\\outside", "\\\\host\\share\\outside", "/etc/x\0",
])
def test_an_artifact_key_leading_out_of_its_cache_folder_refuses_the_file(tmp_path, monkeypatch, key):
    key = key.format(outside=tmp_path / "outside")
    marker = tmp_path / "ran"
    blob = _torch_blob(_runs_code(marker), ("aot_autograd", key, b"written where the key says"))
    use = restore_compile_cache(_cache_file(tmp_path / "crafted.bin", {"torch.bin": blob}))
    _refused(use, "aot_autograd", repr(key[:120]), "outside its cache folder")
    monkeypatch.setenv(KEY_VARIABLE, "leaked")  # a valid signature does not make such a key safe
    signed = _cache_file(tmp_path / "signed.bin", {"torch.bin": blob}, "leaked")
    _refused(restore_compile_cache(signed), repr(key[:120]))
    assert not marker.exists() and not list(tmp_path.rglob("outside*"))


def test_torchs_loader_writes_where_an_absolute_key_points(tmp_path):
    """The hazard the key check stands between (so that the test above cannot pass vacuously)."""
    torch.compiler.load_cache_artifacts(_torch_blob(("aot_autograd", str(tmp_path / "outside"), b"x")))
    assert (tmp_path / "outside").is_dir()


def test_a_blob_that_cannot_be_inspected_is_refused(tmp_path, monkeypatch):
    blob = _torch_blob(("aot_autograd", "a-key", b"x"))
    damaged = _cache_file(tmp_path / "damaged.bin", {"torch.bin": blob[:-1]})
    _refused(restore_compile_cache(damaged), "could not be inspected", "RuntimeError")
    # a torch whose private reader moved: refused, never loaded uninspected
    monkeypatch.delattr("torch.compiler._cache._deserialize_single_cache")
    _refused(restore_compile_cache(_cache_file(tmp_path / "ok.bin", {"torch.bin": blob})),
             "could not be inspected", torch.__version__, "ImportError")


@pytest.mark.parametrize("member", ["triton/abc/../escaped.json", "triton/../x/k.so", "triton/abc/sub/k.so",
                                    "triton/abc/.k.so", "triton/abc/", "triton/C:k/k.so"])
def test_a_triton_member_with_a_bad_name_refuses_the_whole_file(tmp_path, member):
    marker = tmp_path / "ran"
    blob = _torch_blob(_runs_code(marker))
    crafted = {"torch.bin": blob, "triton/0123abcd/k.json": b"{}", member: b"\x7fELF"}
    _refused(restore_compile_cache(_cache_file(tmp_path / "crafted.bin", crafted)), repr(member), "Triton")
    assert not marker.exists() and not list(tmp_path.rglob("escaped.json"))  # refused before torch saw it


def test_a_signed_file_restores_and_one_flipped_byte_refuses_it(tmp_path, monkeypatch, compiled):
    monkeypatch.setenv(KEY_VARIABLE, "the runner's secret")
    path = tmp_path / "compile.bin"
    save_compile_cache(path, CompileCacheUse())
    use = restore_compile_cache(path)
    assert use.restored_bytes > 0 and use.authenticated and not use.unauthenticated and not use.problem, use
    data = bytearray(path.read_bytes())
    for at in (len(MAGIC) + 3, len(data) // 2, len(data) - 1):  # in the tag, in the archive, at its end
        flipped = bytearray(data)
        flipped[at] ^= 1
        path.write_bytes(flipped)
        _refused(restore_compile_cache(path), "tag does not match")


def test_a_file_written_without_the_key_is_refused_once_the_key_is_set(tmp_path, monkeypatch, compiled):
    path = tmp_path / "compile.bin"
    save_compile_cache(path, CompileCacheUse())
    monkeypatch.setenv(KEY_VARIABLE, "the runner's secret")
    _refused(restore_compile_cache(path), f"not authenticated with {KEY_VARIABLE}",
             "carries no HMAC-SHA256 tag")


def test_without_the_key_a_file_loads_and_says_it_was_not_authenticated(tmp_path, monkeypatch, compiled):
    path = tmp_path / "compile.bin"
    monkeypatch.setenv(KEY_VARIABLE, "")  # what a pull request from a fork gets for a secret: no key
    save_compile_cache(path, CompileCacheUse())
    use = restore_compile_cache(path)
    assert use.restored_bytes > 0 and not use.problem and not use.authenticated
    assert use.unauthenticated == UNAUTHENTICATED
    assert "WITHOUT authentication" in use.unauthenticated
    assert f"Set {KEY_VARIABLE} from a CI secret" in use.unauthenticated
