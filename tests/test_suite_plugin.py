"""The suite as users run it: `pytest --pyargs titan_conformance`, through the installed plugin."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from titan_conformance.cli import main
from titan_conformance.gpus import pin_worker_gpus, share_cpu_threads
from titan_conformance.report.schema import load_report

EAGER_PROFILE = """
[compile]
enable = false
[run]
steps = 2
expect_learning = false
"""


VARIANT_PROFILE = EAGER_PROFILE + """
[variants.reseeded]
seed = 1
"""


def test_default_suite_passes_under_xdist(suite):
    """Collection is identical on every worker; each of the suite's two variants (base, topp) is
    built once, on one worker."""
    result = suite("-n", "2", "--tc-device", "cpu")
    # CUDA-graph checks skip on CPU, TP checks on a TP=1 profile, decode timing on the vLLM generator (CI has vLLM).
    result.assert_outcomes(passed=27, skipped=17)  # topp leaves learning to base (run.expect_learning = false)
    result.stdout.fnmatch_lines(["*titan_conformance: suite=tiny-cpu variants=base, topp system=reference*"])
    for variant in ("base", "topp"):
        assert result.stderr.str().count(f"built reference system, variant {variant} ") == 1


def test_planted_fault_fails_the_suite_with_the_cause(suite, pytester):
    profile = pytester.path / "eager.toml"
    profile.write_text(EAGER_PROFILE)
    # The planted faults reach into the native generator.
    result = suite("--tc-suite", str(profile), "--tc-system", "faults:wrong_rope_theta", "--tc-generator", "native",
                   "-k", "logprob_parity", "--tc-report-dir", "out")
    result.assert_outcomes(failed=3, passed=1)  # parity, precision floor, weight sync; the run is finite
    result.stdout.fnmatch_lines(["*differ beyond tolerance*First divergence at block 0, q after RoPE*"])
    assert "Traceback" not in result.stdout.str()
    summary = (pytester.path / "out" / "summary.md").read_text()
    assert "| Logprob parity | ❌ fail | 1 passed, 3 failed |" in summary
    assert summary.count("differ beyond tolerance") == 2 and "look at the generator's RoPE (theta" in summary
    assert summary.count("Where the sides part") == 3  # each failed parity verdict's table
    assert "the generator computes a slightly different model" in summary


def test_report_of_an_xdist_run(suite, pytester):
    """The four files, one report merged from both workers, and the terminal's progress and table."""
    profile = pytester.path / "eager.toml"
    profile.write_text(EAGER_PROFILE)
    profile.write_text(VARIANT_PROFILE)
    result = suite("-n", "2", "--tc-device", "cpu", "--tc-generator", "native", "--tc-suite", str(profile), "--tc-report-dir", "out")
    result.assert_outcomes(passed=26, skipped=18)
    out = pytester.path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json", "summary.md"]
    report = load_report(out / "report.json")
    assert not report["partial"] and report["summary"]["passed"] == 26
    # One worker per variant, each variant built once, all its tests on its worker.
    assert set(report["runs"]) == {"base", "reseeded"} and set(report["workers"]) == {"gw0", "gw1"}
    assert {report["runs"][v]["worker"] for v in report["runs"]} == {"gw0", "gw1"}
    for variant, run in report["runs"].items():
        assert {t["worker"] for t in report["tests"] if t["variant"] == variant} == {run["worker"]}
    for variant in ("base", "reseeded"):
        assert result.stderr.str().count(f"built reference system, variant {variant} ") == 1
    env = report["environment"]
    assert (env["profile"], env["device"], env["backend"]["generator"], env["backend"]["compile"]) == (
        "eager", "cpu", "native", "eager")
    parity = next(t for t in report["tests"] if t["nodeid"].endswith("test_trainer_matches_generator_on_sampled_rollouts[base]"))
    assert parity["checks"][0]["limits"]["max_abs"] == 1e-4 and parity["checks"][0]["metrics"]["tokens"] > 0
    for run in report["runs"].values():
        assert [s["step"] for s in run["steps"]] == [1, 2] and set(run["startup"]) >= {"build", "compile"}
        assert run["logprob_diff"]["per_position"]["tokens"][0] > 0
    assert len((out / "summary.md").read_bytes()) < 64 * 1024
    assert ET.parse(out / "junit.xml").getroot().find("testsuite").get("tests") == "44"
    assert (out / "report.html").read_text().count('src="data:image/svg+xml;base64,') == 4  # no CUDA graphs on CPU
    assert "| Property | `base` | `reseeded` |" in (out / "summary.md").read_text()
    result.stderr.fnmatch_lines(["*gw?] compile ...*", "*step 2/2: Step  2*"])
    result.stdout.fnmatch_lines(["*titan_conformance report*", "variant base: ran on gw*", "  Logprob parity*PASS*8 passed*",
                                 "variant reseeded: ran on gw*", "report: out/*"])
    assert main(["compare", str(out / "report.json"), str(out / "report.json"), "--fail-on-regression"]) == 0


def test_usage_errors_are_one_paragraph(suite, pytester):
    """A pytest usage error (exit 4), printed once, before anything is built: not a FAIL per check
    (tests/bad_inputs.py has many more)."""
    result = suite("--tc-suite", "no-such-profile", "-n", "2")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: No profile 'no-such-profile'*tiny-cpu*"])
    assert result.stderr.str().count("No profile") == 1 and "Traceback" not in result.stderr.str()
    bad = pytester.path / "bad.toml"
    bad.write_text("[sampling]\nnn = 3\n")
    result = suite("--tc-suite", str(bad))
    result.stderr.fnmatch_lines(["*Unknown profile key 'sampling.nn'*"])


def test_gpu_marker_skips_with_the_count_needed(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.tc_gpus(2)
        def test_needs_two():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", "--tc-device", "cpu")
    result.stdout.fnmatch_lines(["*needs 2 GPU(s); this worker holds*"])


def test_an_unrelated_xdist_session_is_untouched(pytester, monkeypatch):
    """Installed, the plugin loads in every session of the environment; in one that neither collects
    the suite nor passes a --tc-* option it changes nothing: no GPU pinning, no logger filters, no
    report, not even for a folder of its own called conformance/."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pytester.mkpydir("conformance")
    (pytester.path / "conformance" / "test_y.py").write_text(
        "import logging, os\n"
        "def test_environment_is_the_users():\n"
        "    assert os.environ['CUDA_VISIBLE_DEVICES'] == '0,1,2,3'\n"
        "    assert not logging.getLogger('torch.__trace').filters\n"
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "conformance")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()
    assert "titan_conformance" not in result.stdout.str()


def test_each_xdist_worker_gets_its_own_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    pin_worker_gpus("gw1", 2, "auto")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pin_worker_gpus("gw3", 4, "auto")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # workers outnumber GPUs: they share
    pin_worker_gpus("gw0", 4, "cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # a CPU run leaves it alone
    # A worker shares out the GPUs its controller found; it does not ask nvidia-smi again.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", "")
    pin_worker_gpus("gw1", 2, "auto", ["0", "1", "2", "3"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_each_xdist_worker_takes_its_share_of_the_cores(monkeypatch):
    """Threads and Inductor's compile pool: 4 workers of a 16-core runner take 4 cores each, not
    4 x 16 threads and 4 x 16 compile subprocesses; a pool size the user set stays."""
    import torch
    import torch._inductor.config as inductor

    # torch's thread count as a plain value: vLLM's CPU worker, loaded earlier in this process by
    # other tests, turns torch.set_num_threads into a no-op once it has bound its threads.
    threads = {"n": 7}
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads["n"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.update(n=n))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    # Not monkeypatch.setattr: its undo deletes a torch config entry, which hides it for good.
    pool, inductor.compile_threads = inductor.compile_threads, 16
    try:
        restore = share_cpu_threads(4)
        assert (threads["n"], inductor.compile_threads) == (4, 4)
        restore()
        assert (threads["n"], inductor.compile_threads) == (7, 16)
        monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "8")
        restore = share_cpu_threads(16)
        assert (threads["n"], inductor.compile_threads) == (1, 16)
        restore()
        assert share_cpu_threads(1) is None  # one worker: all the cores are its own
    finally:
        inductor.compile_threads = pool


def test_the_controller_checks_inputs_without_the_compiler(pytester):
    """Under xdist the controller checks the inputs and merges reports while the workers wait to be
    spawned: Dynamo, Inductor and the model stack (seconds of imports) are the workers' to import.
    The profile's compile settings are still checked there."""
    pytester.makepyfile(probe_plugin="""
        import sys
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            heavy = ("torch._dynamo", "torch._inductor", "titan_conformance.model", "titan_conformance.providers.grpo")
            print("HEAVY:" + ",".join(m for m in heavy if m in sys.modules))
        """)
    result = pytester.runpytest_subprocess("-p", "probe_plugin", "--pyargs", "titan_conformance", "--tc-device", "cpu",
                                           "--tc-suite", "qwen3-0.6b", "--collect-only", "-q", "-s")
    result.stdout.fnmatch_lines(["HEAVY:"])
    bad = pytester.makefile(".toml", bad='[compile]\nbackend = "no_such_backend"\n')
    result = pytester.runpytest_subprocess("--pyargs", "titan_conformance", "--tc-suite", str(bad), "--collect-only")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*compile.backend = 'no_such_backend' is not a torch.compile backend*"])
