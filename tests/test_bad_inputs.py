"""Every bad input of `bad_inputs.CASES` gives its exit code and one paragraph naming the cause,
printed once, with no traceback; a usage error leaves no report behind it, a failed build one
report that names the profile and device."""

from __future__ import annotations

import json

import pytest
import torch

from bad_inputs import CASES, FAILED, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_clear_error(case, tmp_path):
    if case.name == "CUDA without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_case(case, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == case.exit_code, out[-3000:]
    assert case.phrase in out, out[-3000:]
    assert "Traceback" not in out and "During handling of the above exception" not in out, out[-3000:]
    if case.once:  # the message and at most the report's line; pytest's own one-line index of errors aside
        body = out.split("short test summary info")[0]
        assert body.count(case.phrase) <= 2, out[-3000:]
    if case.exit_code == FAILED:  # one failed build, in a report that says what was built where
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert report["summary"]["failed"] + report["summary"]["error"] == 1, report["summary"]
        assert report["environment"]["profile"] in ("p", "tiny-cpu") and report["environment"]["device"] == "cpu"
        assert not report["partial"] or "did not finish" not in (report["partial_reason"] or "")


def test_a_foreign_compile_cache_file_is_left_as_it_was(tmp_path):
    case = next(c for c in CASES if c.name == "compile cache: an unrelated file")
    run_case(case, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "my notes"


def test_an_error_after_compile_is_not_buried_in_torch_trace_lines(tmp_path):
    """pytest captures every non-propagating logger, torch's structured-trace one included: its
    empty DEBUG records once buried a failure under hundreds of lines."""
    from bad_inputs import Case, args

    case = Case("fails after compile", args("suite", "--tc-system", "bad_providers:fails_after_compile", "-k", "parity"),
                1, "planted: the run fails after compile")
    proc = run_case(case, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and case.phrase in out, out[-3000:]
    assert "torch.__trace" not in out, out[-3000:]
