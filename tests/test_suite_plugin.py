"""The suite as users run it: `pytest --pyargs titan_conformance`, through the installed plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from titan_conformance.plugin import _pin_worker_gpus

TESTS = Path(__file__).parent

EAGER_PROFILE = """
[compile]
enable = false
[run]
steps = 2
expect_learning = false
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))

    def run(*args: str):
        return pytester.runpytest_subprocess("--pyargs", "titan_conformance", "-p", "no:cacheprovider", *args, timeout=1200)

    return run


def test_default_suite_passes_under_xdist(suite):
    """Collection is identical on every worker; each worker builds the system once."""
    result = suite("-n", "2", "--tc-device", "cpu")
    result.assert_outcomes(passed=7, skipped=2)  # the CUDA-graph checks skip on CPU
    result.stdout.fnmatch_lines(["*titan_conformance: suite=tiny-cpu system=reference*"])


def test_planted_fault_fails_the_suite_with_the_cause(suite, pytester):
    profile = pytester.path / "eager.toml"
    profile.write_text(EAGER_PROFILE)
    # The planted faults reach into the native generator.
    result = suite("--tc-suite", str(profile), "--tc-system", "faults:wrong_rope_theta", "--tc-generator", "native", "-k", "parity")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*differ beyond tolerance*RoPE theta*"])
    assert "Traceback" not in result.stdout.str()


def test_usage_errors_are_one_paragraph(suite, pytester):
    result = suite("--tc-suite", "no-such-profile", "-k", "learning")
    result.stdout.fnmatch_lines(["*No profile 'no-such-profile'*tiny-cpu*"])
    bad = pytester.path / "bad.toml"
    bad.write_text("[sampling]\nnn = 3\n")
    result = suite("--tc-suite", str(bad), "-k", "learning")
    result.stdout.fnmatch_lines(["*Unknown profile key 'sampling.nn'*"])
    assert "Traceback" not in result.stdout.str()
    result = suite("--tc-system", "nowhere:factory", "-k", "learning")
    result.stdout.fnmatch_lines(["*cannot import 'nowhere'*"])


def test_gpu_marker_skips_with_the_count_needed(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.tc_gpus(2)
        def test_needs_two():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs")
    result.stdout.fnmatch_lines(["*needs 2 GPU(s); this worker holds*"])


def test_each_xdist_worker_gets_its_own_gpus(monkeypatch, pytestconfig):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    _pin_worker_gpus(pytestconfig)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    _pin_worker_gpus(pytestconfig)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
