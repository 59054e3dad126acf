"""`titan-conformance compare` on hostile reports: malformed ones are one clear error naming the file
and the field (exit 2), odd but valid values are shown, and a value that is not finite never passes
quietly (a regression in head, an unusable baseline in base)."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
from report_samples import sample_report

from titan_conformance.cli import main
from titan_conformance.errors import ConformanceError
from titan_conformance.report.compare import compare

REPORT = sample_report()


def parity_metrics(report: dict, variant: str = "base") -> dict:
    return next(c["metrics"] for t in report["tests"] if t["variant"] == variant
                for c in t["checks"] if c["name"] == "logprob_parity")


def compare_command(tmp_path, base: dict | str, head: dict | str, *args: str) -> int:
    """`titan-conformance compare` on two reports (dicts, or JSON text as is); its exit status."""
    paths = []
    for name, report in (("base.json", base), ("head.json", head)):
        (tmp_path / name).write_text(report if isinstance(report, str) else json.dumps(report))
        paths.append(str(tmp_path / name))
    return main(["compare", *paths, *args])


def damaged(change) -> dict:
    report = copy.deepcopy(REPORT)
    change(report)
    return report


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda r: r["runs"]["base"].update(steps=[{}]), "runs['base'].steps[0] has no 'times'"),
        (lambda r: r["runs"]["base"].update(steps=[{"times": {}}]), "runs['base'].steps[0] has no 'seconds'"),
        (lambda r: r["runs"]["base"].update(steps=[3]), "runs['base'].steps[0] is an int, not an object"),
        (lambda r: r["runs"]["base"]["startup"].update(compile="8 s"),
         "runs['base'].startup.compile is the text '8 s', not a number"),
        (lambda r: r["runs"]["base"]["startup"].update(compile=True), "runs['base'].startup.compile is a bool"),
        (lambda r: r["runs"]["base"]["steps"][1]["times"].update(train=[0.3]),
         "runs['base'].steps[1].times.train is a list, not a number"),
        (lambda r: r["runs"]["base"]["steps"][0].update(seconds={}), "runs['base'].steps[0].seconds is a dict"),
        (lambda r: parity_metrics(r).update(max_abs=[1e-6, 2e-6]),
         "_on_sampled_rollouts[base]': metrics.max_abs is a list, not a number"),
        (lambda r: parity_metrics(r).update(k3_kl="tiny"), "metrics.k3_kl is the text 'tiny', not a number"),
        (lambda r: r["runs"]["fp32"]["compile"]["counts"].update({"trainer.TransformerBlock": "2"}),
         "runs['fp32'].compile.counts['trainer.TransformerBlock'] is the text '2', not a number"),
        (lambda r: r["runs"]["fp32"]["compile"].update(counts=[2]), "runs['fp32'].compile.counts is a list"),
        (lambda r: r["runs"]["fp32"]["compile"].update(limit_hits=3), "runs['fp32'].compile.limit_hits is an int"),
        (lambda r: r["runs"]["fp32"]["capture"].update(seconds=[0.6]), "runs['fp32'].capture.seconds is a list"),
        (lambda r: r["runs"]["fp32"].update(capture="none"), "runs['fp32'].capture is the text 'none'"),
        (lambda r: r["runs"]["fp32"].update(logprob_diff=[]), "runs['fp32'].logprob_diff is a list"),
        (lambda r: r["environment"].update(device_class="NVIDIA H100", gpu=["NVIDIA H100"]), "environment.gpu is a list"),
        (lambda r: r["runs"]["fp32"].update(versions="2.13"), "runs['fp32'].versions is the text '2.13'"),
        (lambda r: r["runs"].update({"bad\ud800name": r["runs"]["fp32"]}), "a key of runs holds a lone surrogate ('\\ud800')"),
    ],
)
def test_a_malformed_report_is_an_error_naming_the_file_and_the_field(change, fragment, tmp_path, capsys):
    for base, head in ((REPORT, damaged(change)), (damaged(change), REPORT)):
        assert compare_command(tmp_path, base, head) == 2
        err = capsys.readouterr().err
        bad = "head.json" if head is not REPORT else "base.json"
        assert f"{tmp_path / bad} is a malformed titan_conformance report" in err and fragment in err, err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "text, fragment",
    [
        (json.dumps(REPORT)[:-1] + ', "extra": ' + nested(100_000) + "}", "nested deeper than the decoder can follow"),
        # Decodable, but deeper than any report: refused before str() or a renderer recurses into it.
        (json.dumps(damaged(lambda r: r["runs"]["base"]["capture"].update(captured="@"))).replace('"@"', nested(200)),
         "runs.base.capture.captured nests deeper than 64 levels"),
        (json.dumps(REPORT).replace('"compile": 8.0', '"compile": ' + "9" * 5000, 1), "integer string conversion"),
    ],
    ids=["beyond the decoder", "deeper than any report", "an int of 5000 digits"],
)
def test_deep_or_huge_json_is_an_error(text, fragment, tmp_path, capsys):
    assert compare_command(tmp_path, REPORT, text) == 2
    err = capsys.readouterr().err
    assert "head.json is a malformed" in err and fragment in err, err


def rows_of(base: dict | str, head: dict | str, tmp_path, capsys, *args: str) -> tuple[int, dict[tuple[str, str], str]]:
    """Exit status and (section, metric) -> the table's line of `compare` on base and head."""
    status = compare_command(tmp_path, base, head, *args)
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        if match := re.match(r"(\[\w+\] \S+( diff)?) +(\S+) ", line):
            rows[match.group(1), match.group(3)] = line
    return status, rows


def with_number(report: dict, path: tuple, literal: str) -> str:
    """`report` as JSON with the value at `path` (keys) replaced by the JSON text `literal`, e.g. NaN."""
    report = copy.deepcopy(report)
    table = report
    for key in path[:-1]:
        table = table[key]
    table[path[-1]] = "@@"
    return json.dumps(report).replace('"@@"', literal)


NON_FINITE = ["NaN", '"nan"', "Infinity", '"inf"', "-Infinity", "1e400", "9" * 400]


@pytest.mark.parametrize("literal", NON_FINITE)
def test_a_non_finite_time_in_head_is_a_regression_even_ten_times_slower(literal, tmp_path, capsys):
    slow = sample_report(slow=10.0)
    head = with_number(slow, ("runs", "base", "startup", "compile"), literal)
    status, rows = rows_of(REPORT, head, tmp_path, capsys, "--fail-on-regression")
    assert status == 1
    for metric in ("compile", "total"):
        assert "REGRESSION: head is" in rows["[base] startup", metric], rows["[base] startup", metric]


@pytest.mark.parametrize("path, row", [
    (("runs", "base", "steps", 2, "times", "train"), ("[base] step", "train")),  # a median would outvote it
    (("runs", "base", "steps", 0, "seconds"), ("[base] step", "total")),
    (("runs", "base", "capture", "seconds"), ("[base] capture", "time")),
    (("runs", "base", "compile", "counts", "generator.TransformerBlock"), ("[base] recompiles", "generator.TransformerBlock")),
])
@pytest.mark.parametrize("literal", ["NaN", '"nan"'])
def test_every_number_compared_flags_a_non_finite_head(path, row, literal, tmp_path, capsys):
    status, rows = rows_of(REPORT, with_number(REPORT, path, literal), tmp_path, capsys, "--fail-on-regression")
    assert status == 1 and "REGRESSION: head is nan" in rows[row], rows


def test_a_non_finite_parity_metric_in_head_is_a_regression(tmp_path, capsys):
    head = damaged(lambda r: parity_metrics(r).update(max_abs="nan"))
    status, rows = rows_of(REPORT, head, tmp_path, capsys, "--fail-on-regression")
    assert status == 1 and "REGRESSION: head is nan" in rows["[base] logprob diff", "max_abs"]


@pytest.mark.parametrize("literal", ["NaN", '"inf"'])
def test_a_non_finite_base_is_an_unusable_baseline_not_a_pass(literal, tmp_path, capsys):
    base = with_number(REPORT, ("runs", "fp32", "startup", "compile"), literal)
    status = compare_command(tmp_path, base, sample_report(slow=10.0), "--fail-on-regression")
    out = capsys.readouterr().out
    assert status == 1  # the other rows' tenfold slowdown still counts
    assert re.search(r"^\[fp32\] startup +compile +(nan|inf) +80\.000s +UNUSABLE BASE: base is (nan|inf)", out, re.MULTILINE), out
    assert out.rstrip().endswith("row(s) not judged: the base's value is not finite (re-run the base)"), out


@pytest.mark.parametrize("option", ["--threshold", "--min-seconds"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.1", "NaN", "ten"])
def test_thresholds_that_are_not_finite_and_non_negative_are_refused(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        compare_command(tmp_path, REPORT, REPORT, option, value)
    assert stop.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


@pytest.mark.parametrize("threshold, min_seconds", [(math.nan, 0.05), (0.1, math.nan), (math.inf, 0.05)])
def test_compare_itself_refuses_a_threshold_that_would_make_every_comparison_false(threshold, min_seconds):
    with pytest.raises(ConformanceError, match="must be finite numbers >= 0"):
        compare(REPORT, sample_report(slow=10.0), threshold, min_seconds)


def test_names_and_values_with_control_characters_are_shown_escaped(tmp_path, capsys):
    evil = "fp32\x1b[2J\n| x\u202e"
    report = copy.deepcopy(REPORT)
    report["runs"][evil] = report["runs"].pop("fp32")
    report["variants"][evil] = report["variants"].pop("fp32")
    for test in report["tests"]:
        test["variant"] = evil if test["variant"] == "fp32" else test["variant"]
    report["runs"][evil]["capture"]["captured"] = ["\x07bell", 2]
    report.update(partial=True, partial_reason="stopped\r\x1b[31m")
    for markdown in ((), ("--markdown",)):
        assert compare_command(tmp_path, report, report, "--allow-partial", *markdown) == 0
        out = capsys.readouterr().out
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", out), repr(out)
        assert "[fp32\\x1b[2J\\n| x\\u202e] startup" in out.replace("\\|", "|")
        assert "stopped\\r\\x1b[31m" in out and "\\x07bell" in out
        lines = out[out.index("section"):].rstrip("\n").splitlines()  # one a row: header, (rule,) rows, (blank,) footer
        assert len(lines) == len(compare(report, report, allow_partial=True)) + (4 if markdown else 2), out
