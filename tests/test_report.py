"""Reports without a pytest run: schema, merge, the four files, atomic writes, compare and its CLI."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from report_samples import sample_report, with_failure

from titan_conformance.cli import main
from titan_conformance.errors import ConformanceError
from titan_conformance.report import write
from titan_conformance.report.collect import jsonable
from titan_conformance.report.compare import compare
from titan_conformance.report.html import render_html
from titan_conformance.report.markdown import SUMMARY_LIMIT, summary_markdown
from titan_conformance.report.merge import ReportStore
from titan_conformance.report.schema import SCHEMA_VERSION, load_report, validate


@pytest.fixture(scope="module")
def report():
    return sample_report()


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    return write.write_report(report, tmp_path_factory.mktemp("report") / "out")


def test_report_is_json_of_the_schema(report):
    data = json.loads(json.dumps(report, allow_nan=False))
    assert validate(data, "sample") is data
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data["runs"]) == {"base", "fp32"} and {t["worker"] for t in data["tests"]} == {"gw0", "gw1"}
    assert {v: (s["status"], s["worker"]) for v, s in data["variants"].items()} == {"base": ("ran", "gw0"), "fp32": ("ran", "gw1")}
    assert data["runs"]["fp32"]["worker"] == "gw1" and {t["variant"] for t in data["tests"]} == {"base", "fp32"}
    parity = next(t for t in data["tests"] if t["property"] == "logprob_parity")["checks"][0]
    assert parity["limits"] == {"max_abs": 1e-4, "p99_abs": 1e-5, "mean_abs": 1e-6, "min_tokens": 1} and parity["passed"]
    assert {"max_abs", "p99_abs", "frac_over_tolerance", "k3_kl", "mean_exp_abs"} <= set(parity["metrics"])
    run = data["runs"]["base"]
    assert run["compile"]["counts"] == {"trainer.TransformerBlock": 2, "generator.TransformerBlock": 1}
    assert run["capture"]["captured"] == [1, 2, 4, 8] and run["capture"]["seconds_per_size"]["8"] == 0.25
    assert len(run["logprob_diff"]["per_position"]["mean_abs"]) == 12
    assert sum(run["logprob_diff"]["histogram"]["counts"]) == sum(60 + 7 * i for i in range(4))


def test_merge_records_outcomes_crashes_and_partial_runs():
    store = ReportStore()
    store.add_phase("conformance/test_a.py::t1", "setup", "failed", 0.1, "gw0", "tc_system failed")
    store.add_phase("conformance/test_a.py::t1", "teardown", "failed", 0.1, "gw0", "later")
    store.add_phase("conformance/test_b.py::t2", "call", "failed", 0.1, "gw1", "worker 'gw1' crashed while running")
    store.worker_down("gw1", "Not properly terminated")
    report = store.to_report(1, collected=3, interrupted=True, options={})
    t1, t2 = report["tests"]
    assert (t1["outcome"], t1["message"]) == ("error", "tc_system failed")
    assert t2["outcome"] == "failed"
    assert report["workers"] == {"gw0": {"status": "interrupted", "error": None},
                                 "gw1": {"status": "crashed", "error": "Not properly terminated"}}
    assert report["partial"] and "interrupted" in report["partial_reason"]
    assert "1 of 3 collected tests did not finish" in report["partial_reason"]


@pytest.mark.parametrize(("text", "error"), [
    ("{not json", r"not valid JSON \(Expecting property name"),
    ('{"schema": "something else"}', "is not a titan_conformance report"),
    ('{"schema": "titan_conformance.report", "schema_version": 999}', "schema version 999"),
    ('{"schema": "titan_conformance.report", "schema_version": %d, "tests": 3}' % SCHEMA_VERSION,
     "malformed titan_conformance report"),
])
def test_bad_reports_are_one_clear_error(tmp_path, text, error):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ConformanceError, match=error):
        load_report(path)
    with pytest.raises(ConformanceError, match="does not exist"):
        load_report(tmp_path / "missing.json")


def test_the_four_files(written, report):
    assert sorted(p.name for p in written.iterdir()) == sorted(write.FILES)  # no staging folder left
    assert load_report(written / "report.json") == json.loads(json.dumps(report))
    md = (written / "summary.md").read_text()
    assert md.index("| Property | `base` | `fp32` |") < md.index("#### Variant `base`") < md.index("#### Variant `fp32`")
    base = md[md.index("#### Variant `base`"):]
    assert base.index("| Logprob parity | ✅ pass") < base.index("| Recompile budget |") < base.index("| Budgets |")
    assert "- fp32: ran on gw1 (tiny-cpu)" in md
    suite = ET.parse(written / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("skipped"), suite.get("failures")) == ("6", "1", "0")
    html = (written / "report.html").read_text()
    assert html.count('<img class="plot"') == 5 and html.count('src="data:image/svg+xml;base64,') == 5
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "4*L[&#39;x&#39;].size()[1] &lt;= 4096" in html  # the ledger, escaped


def test_summary_names_each_failure_and_fits_a_comment(report):
    failed = with_failure(report, "test_recompiles_within_limit", "Recompile budget exceeded: " + "x" * 100_000)
    for i in range(40):
        failed["tests"].append(dict(failed["tests"][0], nodeid=f"conformance/test_x.py::t{i}", outcome="failed",
                                    message=f"cause {i}: " + "y" * 5000))
    md = summary_markdown(failed)
    assert len(md.encode()) <= SUMMARY_LIMIT
    assert "## titan_conformance: ❌ failed" in md and "Recompile budget exceeded" in md
    assert md.rstrip().endswith("report.json has every failure.") and md.count("```") % 2 == 0
    assert "Partial report" in summary_markdown(sample_report(interrupted=True))


def test_a_failed_write_leaves_the_previous_files(written, report, monkeypatch):
    before = {name: (written / name).read_bytes() for name in write.FILES}
    monkeypatch.setattr(write, "_write_durably", _fail_on("report.json"))
    with pytest.raises(OSError, match="disk full"):
        write.write_report(sample_report(slow=2.0, interrupted=True), written)
    assert {name: (written / name).read_bytes() for name in write.FILES} == before
    assert sorted(p.name for p in written.iterdir()) == sorted(write.FILES)


def _fail_on(name):
    real = write._write_durably

    def fake(path, data):
        if path.name == name:
            raise OSError("disk full")
        real(path, data)

    return fake


def test_step_summary_is_appended_within_its_cap(tmp_path, report):
    path = tmp_path / "step_summary.md"
    path.write_text("earlier step\n" + "z" * (write.STEP_SUMMARY_LIMIT - 3000))
    md = summary_markdown(with_failure(report, "test_recompiles", "cause " * 2000))
    assert write.append_step_summary(md, str(path))
    assert os.path.getsize(path) <= write.STEP_SUMMARY_LIMIT
    assert path.read_text().endswith("summary.md has all of it.\n")
    path.write_text("z" * (write.STEP_SUMMARY_LIMIT - 100))
    assert not write.append_step_summary(md, str(path))  # full: nothing more
    assert os.path.getsize(path) == write.STEP_SUMMARY_LIMIT - 100


def test_compare_flags_regressions_beyond_the_threshold(report):
    rows = {(r.section, r.metric): r for r in compare(report, sample_report(slow=1.5))}
    assert rows["[base] startup", "compile"].regression and rows["[fp32] step", "total"].regression
    assert not rows["[base] step", "weight_sync"].regression  # +0.01 s is timer noise (--min-seconds)
    assert not rows["[base] logprob diff", "max_abs"].regression and rows["[base] capture", "sizes"].note == ""
    assert not any(r.regression for r in compare(report, sample_report(slow=1.05)))
    head = with_failure(report, "test_recompiles_within_limit", "Recompile budget exceeded")
    head["runs"]["fp32"]["compile"]["counts"]["generator.TransformerBlock"] = 3
    rows = {(r.section, r.metric): r for r in compare(report, head)}
    assert rows["[fp32] recompiles", "generator.TransformerBlock"].regression
    assert not rows["[base] recompiles", "generator.TransformerBlock"].regression  # per variant
    assert rows["[fp32] verdict", "test_recompiles_within_limit[fp32]"].regression


def test_compare_cli(tmp_path, report, capsys):
    base, head, other = tmp_path / "base.json", tmp_path / "head.json", tmp_path / "other.json"
    base.write_text(json.dumps(report))
    head.write_text(json.dumps(sample_report(slow=1.5)))
    assert main(["compare", str(base), str(head)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[base\] startup +compile +8\.000s +12\.000s +\+4\.000s \(\+50\.0%\) +REGRESSION$", out, re.M)
    assert out.rstrip().endswith("20 regression(s)")  # 10 a variant
    assert main(["compare", str(base), str(head), "--fail-on-regression"]) == 1
    assert main(["compare", str(base), str(base), "--fail-on-regression"]) == 0
    assert main(["compare", str(base), str(head), "--markdown"]) == 0
    assert "| [base] startup | compile | 8.000s | 12.000s |" in capsys.readouterr().out
    other.write_text(json.dumps(dict(report, schema_version=SCHEMA_VERSION + 1)))
    assert main(["compare", str(base), str(other)]) == 2
    assert "titan-conformance: error:" in capsys.readouterr().err
    other.write_text(json.dumps(dict(report, environment=dict(report["environment"], profile="qwen3-0.6b"))))
    assert main(["compare", str(base), str(other)]) == 2
    assert "Incompatible reports" in capsys.readouterr().err
    other.write_text(json.dumps(report)[:-40])
    assert main(["compare", str(base), str(other), "--fail-on-regression"]) == 2
    assert "malformed report: not valid JSON" in capsys.readouterr().err


def test_a_run_that_never_built_the_system_still_reports():
    store = ReportStore()
    store.add_phase("conformance/test_budgets.py::t", "setup", "failed", 0.1, "main", "No profile 'x.toml'")
    report = store.to_report(1, 1, False, {"suite": "suites/x.toml"})
    assert report["environment"]["profile"] == "x" and report["tests"][0]["outcome"] == "error"
    html = render_html(report)
    assert "<img" not in html and html.count('<p class="note">') == 7  # six plots and the ledger
    assert "No profile 'x.toml'" in summary_markdown(report)


def test_records_are_plain_json():
    value = {1: float("nan"), "t": torch.tensor([1.0, float("inf")]), "s": {3, 1}}
    assert jsonable(value) == {"1": "nan", "t": [1.0, "inf"], "s": [1, 3]}


def test_junit_holds_any_message(report):
    """Engine errors carry ANSI colours (ESC) and can hold NUL: junit.xml stays well-formed XML."""
    from titan_conformance.report.junit import junit_xml

    failed = with_failure(report, "parity", "engine: \x1b[31mCUDA error\x1b[0m at \x00\x07 step")
    root = ET.fromstring(junit_xml(failed))
    text = "".join(root.itertext())
    assert "CUDA error" in text and "\\x00\\x07" in text and "\x1b" not in text


def test_an_unauthenticated_compile_cache_is_said_in_every_view(report):
    from titan_conformance.report.terminal import summary_lines

    report = json.loads(json.dumps(report))
    run = next(iter(report["runs"].values()))
    run["compile"]["cache"] = {"unauthenticated": "loaded WITHOUT authentication: TC_COMPILE_CACHE_KEY is not set"}
    assert "loaded WITHOUT authentication" in summary_markdown(report)
    assert "loaded WITHOUT authentication" in render_html(report)
    assert any("loaded WITHOUT authentication" in text for text, _ in summary_lines(report, None, None))


def test_a_localized_failure_shows_where_the_sides_part(report, tmp_path):
    from titan_conformance.checks.localize import Localization, PointDivergence
    from titan_conformance.protocol.probe_points import probe_points
    from titan_conformance.report.plots import localization

    ratios = {name: 1.0 for name in probe_points(2)}
    ratios |= {"blocks.1.q_rope": 12.0, "blocks.1.k_rope": 9.0, "blocks.1.block_output": float("inf")}
    loc = Localization([PointDivergence(n, r, 1.0, r, 1e-7) for n, r in ratios.items()], 4.0, 8, 0.25, {})
    assert loc.first.name == "blocks.1.q_rope"
    failed = with_failure(report, "test_trainer_matches_generator", "parity failed")
    test = next(t for t in failed["tests"] if "test_trainer_matches_generator" in t["nodeid"])
    test["checks"][0]["metrics"]["localization"] = jsonable(loc.metrics())
    md = summary_markdown(failed)
    assert "block 1, q after RoPE" in md and "| embedding | block 0 | block 1 | final norm | logits | logprobs | sampled logprobs |" in md
    assert "| 1 | 1 | inf | 1 | 1 | 1 | 1 |" in md  # block 1's largest: its inf output
    plot = localization(failed)
    assert plot.uri and "first divergence at block 1, q after RoPE" in plot.note
    assert localization(report).uri is None  # nothing failed: no figure, a note
    saved = json.loads((write.write_report(failed, tmp_path / "out") / "report.json").read_text())
    check = next(c for t in saved["tests"] for c in t["checks"] if c["metrics"].get("localization"))
    assert check["metrics"]["localization"]["first_point"] == "blocks.1.q_rope"
    assert check["metrics"]["localization"]["seconds"] == 0.25
