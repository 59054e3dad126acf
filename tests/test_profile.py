from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.profile import bundled_profiles, load_profile


def test_default_profile_loads_and_derives_max_num_seqs():
    profile = load_profile("tiny-cpu")
    assert "tiny-cpu" in bundled_profiles()
    assert profile.max_num_seqs == profile.sampling.num_prompts_per_step * profile.sampling.n
    assert profile.compile.fullgraph and profile.compile.recompile_limit == 8
    assert profile.compile.max_compiles == {"trainer": 1, "generator": 1}


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "suites").glob("*.toml")), ids=lambda p: p.stem)
def test_bundled_profiles_allow_no_compile_after_startup(path):
    """Read from this checkout's suites/ (the installed package may be another checkout's)."""
    assert load_profile(str(path)).compile.zero_compiles_after_startup


def test_a_profile_that_leaves_it_out_only_counts_compiles_after_startup(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[compile]\nrecompile_limit = 4\n")
    assert not load_profile(str(path)).compile.zero_compiles_after_startup


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[compile]\nfulgraph = true\n", "Unknown profile key 'compile.fulgraph'"),
        ("[sampling]\nn = 'eight'\n", "'sampling.n' must be int"),
        ("[sampling]\nn = true\n", "'sampling.n' must be int"),
        ("[generator]\nmax_num_seqs = 4\n", "generator.max_num_seqs is invalid"),
        ("[generator]\nbatch_invariant = 'yes'\n", "'generator.batch_invariant' must be bool"),
        ("[model]\ndtype = 'float8'\n", "'model.dtype' must be one of"),
        ("[compile]\nrecompile_limit = 0\n", "compile.recompile_limit is invalid"),
        ("[compile]\nmax_compiles = { generator = 0 }\n", "compile.max_compiles is invalid"),
        ("[compile]\nmax_compiles = { generator = 'one' }\n", "'compile.max_compiles.generator' must be int"),
        ("[compile]\nmax_compiles = 1\n", "'compile.max_compiles' must be a table"),
        ("[compile]\nzero_compiles_after_startup = 'yes'\n", "'compile.zero_compiles_after_startup' must be bool"),
        ("sampling = 3\n", "'sampling' must be a table"),
        ("[sampling]\ntop_p = 0\n", "sampling.top_p is invalid; it must be in (0, 1]"),
        ("[sampling]\ntop_p = 1.5\n", "sampling.top_p is invalid"),
        ("[sampling]\ntop_p = nan\n", "sampling.top_p is invalid"),
        ("[sampling]\ntop_k = -1\n", "sampling.top_k is invalid; it must be 0 (off) or >= 1"),
        ("[sampling]\ntop_k = 2.5\n", "'sampling.top_k' must be int"),
        ("[sampling]\nlogprobs = 'processed_logprobs'\n", "'sampling.logprobs' must be one of 'raw', 'processed'"),
        ("[sampling\n", "not valid TOML"),
        ('[budgets."NVIDIA A100"]\nstep = 1.0\n', "[budgets.NVIDIA A100] is not a device class"),
        ("[budgets.h100]\nstep = -1.0\n", "budgets.h100.step = -1.0 is negative"),
        ("[budgets.h100]\nsteps = 1.0\n", "Unknown profile key 'budgets.h100.steps'"),
        ("budgets = 3\n", "'budgets' must be a table"),
        ("[budgets.h100]\nstep = nan\n", "budgets.h100.step = nan is not a number"),
        ("[budgets.h100]\nstep = inf\n", "budgets.h100.step is infinite"),
    ],
)
def test_bad_profiles_name_the_key(tmp_path, toml, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConformanceError, match=None) as info:
        load_profile(str(path))
    assert fragment in str(info.value)


def test_budgets_of_any_gpu_class(tmp_path):
    path = tmp_path / "a100.toml"
    path.write_text("[budgets.a100]\nstep = 1.5\n\n[budgets.rtx4090]\nstartup = 90\n")
    budgets = load_profile(str(path)).budgets
    assert budgets["a100"].step == 1.5 and budgets["rtx4090"].startup == 90.0 and "h100" not in budgets


def test_unknown_profile_lists_the_bundled_ones():
    with pytest.raises(ConformanceError, match="tiny-cpu"):
        load_profile("no-such-profile")


@pytest.mark.parametrize("name", ["a/b", "x[1]", "é", "tab\tname", "-lead", ".hidden", "a" * 65])
def test_variant_names_are_plain_ascii(tmp_path, name):
    path = tmp_path / "p.toml"
    path.write_text(f'[variants."{name}".run]\nsteps = 1\n'.replace("\t", "\\t"))
    with pytest.raises(ConformanceError, match="is not allowed"):
        load_profile(str(path))


def test_a_dashed_variant_name_is_credited_to_itself():
    from titan_conformance.report.merge import ReportStore, variant_of

    names = ["base", "bf16", "bf16-no-graphs"]
    assert variant_of("conformance/test_x.py::t[bf16-no-graphs]", names) == "bf16-no-graphs"
    assert variant_of("conformance/test_x.py::t[bf16-no-graphs-3]", names) == "bf16-no-graphs"
    assert variant_of("a[b]/conformance/test_x.py::t[bf16]", names) == "bf16"
    store = ReportStore(variants=names)
    store.add_phase("conformance/test_x.py::t[bf16-no-graphs]", "call", "failed", 0.1, "gw0", "boom")
    assert store.to_report(1, 1, False, {})["tests"][0]["variant"] == "bf16-no-graphs"


def test_a_relative_base_is_read_from_beside_the_profile(tmp_path, monkeypatch):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "other.toml").write_text('description = "the base"\n[run]\nsteps = 3\n')
    (tmp_path / "suite" / "p.toml").write_text('[variants.v]\nbase = "other.toml"\n')
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    assert load_profile(str(tmp_path / "suite" / "p.toml"), "v").run.steps == 3
