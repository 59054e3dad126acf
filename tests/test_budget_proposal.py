"""Device classes from GPU names, and `titan-conformance budgets`: the table it proposes from a report
loads into a profile, passes the run it came from, and FAILS a run that got 3x slower."""

from __future__ import annotations

import copy
import json
import tomllib

import pytest
from report_samples import sample_report, with_failure

from titan_conformance.checks.budgets import budget_verdict, gpu_class, measured, proposed_budget
from titan_conformance.cli import main
from titan_conformance.data_files import data_dir
from titan_conformance.profile import load_profile


@pytest.mark.parametrize(
    "name, cls",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA GeForce RTX 3090 Ti", "rtx3090ti"),
        ("NVIDIA GeForce RTX 2080 SUPER", "rtx2080super"),
        ("Quadro RTX 6000", "rtx6000"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx6000ada"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtxpro6000blackwell"),
        ("NVIDIA RTX A6000", "a6000"),
        ("AMD Instinct MI300X", "mi300x"),
        ("AMD Instinct MI250X/MI250", "mi250x"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "h100-mig-1g10gb"),
        ("NVIDIA TITAN RTX", "titan-rtx"),
        ("AMD Radeon Graphics", "radeon-graphics"),
    ],
)
def test_gpu_class_is_the_model(name, cls):
    assert gpu_class(name) == cls


def test_proposal_rounds_up_to_two_significant_digits():
    assert proposed_budget({"startup": 10.2, "train": 0.315, "weight_sync": 0.0001, "step": 0.5}, 2.0) == {
        "startup": 21.0, "train": 0.63, "weight_sync": 0.01, "step": 1.0,
    }
    assert proposed_budget({"k": 0.1}, 3.0) == {"k": 0.3}  # not 0.31 for 0.30000000000000004
    assert proposed_budget({"k": 0.1 * 3}, 1.0)["k"] >= 0.1 * 3  # never below the measurement


def budgets_command(report: dict, tmp_path, *args: str) -> int:
    """`titan-conformance budgets` on `report` written to a file; its exit status."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return main(["budgets", str(path), *args])


def proposal_for(report: dict, tmp_path, capsys, *args: str) -> str:
    assert budgets_command(report, tmp_path, *args) == 0
    return capsys.readouterr().out


def with_budgets(tmp_path, tables: str):
    """The tiny-cpu profile with its own budgets replaced by `tables`."""
    text = (data_dir("suites") / "tiny-cpu.toml").read_text()
    path = tmp_path / "proposed.toml"
    path.write_text(text[: text.index("[budgets.cpu]")] + tables)
    return load_profile(str(path))


def run_values(report: dict, variant: str) -> dict[str, float]:
    run = report["runs"][variant]
    return measured(run["startup"], [s["times"] for s in run["steps"]])


def test_proposed_table_loads_passes_its_run_and_fails_a_slower_one(tmp_path, capsys):
    report = sample_report()
    report["runs"]["base"]["startup"]["compile"] = 9.0  # each variant gets its own table
    tables = proposal_for(report, tmp_path, capsys)
    assert "[budgets.cpu]" in tables and "[variants.fp32.budgets.cpu]" in tables and "2x its run's times" in tables
    budget = with_budgets(tmp_path, tables).budgets["cpu"]
    assert budget.compile == 18.0 and budget.startup == 23.0 and budget.step == 1.7  # 2 x 9.0, 11.2, 0.835
    assert budget_verdict(run_values(report, "base"), budget, "cpu").passed
    assert "compile = 16.0" in tables.split("[variants.fp32.budgets.cpu]")[1]  # fp32's 8.0
    slower = budget_verdict(run_values(sample_report(slow=3.0), "base"), budget, "cpu")
    assert not slower.passed and "compile took 24.000s, budget 18.000s" in slower.message


def test_failed_runs_are_left_out_and_old_reports_get_the_model_class(tmp_path, capsys):
    report = sample_report()
    report["runs"]["base"]["error"] = "worker died in step 2"
    report["runs"]["base"]["startup"]["compile"] = 99.0
    for run in report["runs"].values():  # written before device classes were GPU models
        run["device_class"], run["versions"]["gpu"] = "nvidia a100-sxm4-80gb", "NVIDIA A100-SXM4-80GB"
    tables = proposal_for(report, tmp_path, capsys)
    assert "[variants.fp32.budgets.a100]" in tables and "1 failed run(s) left out" in tables
    assert "[budgets.a100]" not in tables and "compile = 16.0" in tables  # fp32's 8.0, not the failed base's 99.0


def test_runs_on_a_shared_gpu_are_left_out(tmp_path, capsys):
    report = sample_report()
    for run in report["runs"].values():
        run["gpu_shared"] = "2 workers run variants at once on 1 GPU(s)"
    assert budgets_command(report, tmp_path) == 2
    assert "2 on a GPU shared with other workers" in capsys.readouterr().err


def test_a_cached_compile_is_called_out(tmp_path, capsys):
    report = sample_report()
    for run in report["runs"].values():
        run["compile"]["cache"] = {"fxgraph_cache_hit": 2, "fxgraph_cache_miss": 1}
    assert "partly cached in this run (2 of 3 Inductor graphs from cache)" in proposal_for(report, tmp_path, capsys)


@pytest.mark.parametrize("margin", ["0.5", "nan", "inf", "1000"])
def test_a_margin_out_of_range_is_an_error(margin, tmp_path, capsys):
    assert budgets_command(sample_report(), tmp_path, "--margin", margin) == 2
    assert "out of range" in capsys.readouterr().err


def test_a_report_without_runs_is_an_error(tmp_path, capsys):
    report = sample_report()
    report["runs"] = {}  # e.g. a TP profile, whose single-process checks skip
    assert budgets_command(report, tmp_path) == 2
    assert "(no check of it built a system)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda run: run.update(startup={}, steps=[]), "no completed run with startup or step times"),
        (lambda run: run.update(error="killed"), "no completed run with startup or step times (2 run(s), 2 failed,"),
        (lambda run: run["startup"].update(compile="8 s"), "runs['base'].startup.compile is the text '8 s', not a number"),
        (lambda run: run.update(steps=["step 1"]), "runs['base'].steps[0] is the text 'step 1', not an object"),
        (lambda run: run.update(steps=[{}]), "runs['base'].steps[0] has no 'times'"),
        (lambda run: run["compile"].update(cache={"fxgraph_cache_hit": "2"}),
         "runs['base'].compile.cache.fxgraph_cache_hit is the text '2', not a count"),
        (lambda run: run.update(versions=["2.13"]), "runs['base'].versions is a list"),
        (lambda run: run.update(device_class={"h100": 1}), "runs['base'].device_class is a dict"),
    ],
)
def test_reports_without_usable_times_are_errors(damage, fragment, tmp_path, capsys):
    report = sample_report()
    for run in report["runs"].values():
        damage(run)
    assert budgets_command(report, tmp_path) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("literal", ["NaN", '"nan"', "Infinity", '"-inf"', "1e400", "9" * 400, "-1.5", "1e12"])
@pytest.mark.parametrize("where", [("startup", "compile"), ("steps", 2, "times", "train")])
def test_a_time_that_is_not_finite_is_never_budgeted(literal, where, tmp_path, capsys):
    report = sample_report()
    table = report["runs"]["fp32"]
    for key in where[:-1]:
        table = table[key]
    table[where[-1]] = "@@"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report).replace('"@@"', literal))
    assert main(["budgets", str(path), "--allow-failed", "--allow-partial"]) == 2  # no flag lets it through
    err = capsys.readouterr().err
    field = "startup.compile" if where[0] == "startup" else "steps[2].times.train"
    assert f"runs['fp32'].{field} is " in err and "not a time a budget can come from" in err, err


def test_a_report_whose_checks_failed_is_refused_unless_allowed(tmp_path, capsys):
    report = with_failure(sample_report(), "test_trainer_matches_generator", "logprob difference is NaN at 12 tokens")
    assert budgets_command(report, tmp_path) == 2
    err = capsys.readouterr().err
    assert "records 1 failed test(s) ('conformance/test_logprob_parity.py::" in err and "--allow-failed" in err
    tables = proposal_for(report, tmp_path, capsys, "--allow-failed")
    assert tables.startswith("# WARNING: proposed with --allow-failed from a run whose checks failed: 1 test(s)")
    assert tomllib.loads(tables)["budgets"]["cpu"]["compile"] == 16.0


def test_a_failed_check_counts_where_pytest_said_passed(tmp_path, capsys):
    report = sample_report()
    report["tests"][0]["checks"][0]["passed"] = False  # e.g. pytest.fail patched away in the process
    assert report["tests"][0]["outcome"] == "passed"
    assert budgets_command(report, tmp_path) == 2
    assert "records 1 failed test(s)" in capsys.readouterr().err


def test_a_partial_report_is_refused_unless_allowed(tmp_path, capsys):
    report = sample_report()
    report.update(partial=True, partial_reason="the run was interrupted (SIGTERM)\n\x1b[2J")
    assert budgets_command(report, tmp_path, "--allow-failed") == 2
    assert "is a partial report (the run was interrupted (SIGTERM)\\n\\x1b[2J)" in capsys.readouterr().err
    tables = proposal_for(report, tmp_path, capsys, "--allow-partial")
    assert tables.splitlines()[0].startswith("# WARNING: proposed with --allow-partial: ")
    assert set(tomllib.loads(tables)) == {"budgets", "variants"}


HOSTILE = ["a b", "a.b", 'say "hi"', "x]y", "[budgets]", "two\nlines", "tab\tdel\x7f", "back\\slash", "é 漢 🙂",
           "\u202eevil", "'single'", "=", "#", "", "bf16-no-graphs"]


def test_names_are_quoted_so_the_toml_parses_back_to_the_same_names(tmp_path, capsys):
    report = sample_report()
    template = report["runs"].pop("fp32")
    report["runs"]["base"]["device_class"] = "h100 80GB.\"x\"]\n"
    for i, name in enumerate(HOSTILE):
        run = report["runs"][name] = copy.deepcopy(template)
        run["device_class"] = HOSTILE[-1 - i] or "cpu"
        run["versions"].update(gpu=None, torch="2.13\n[budgets.evil]\nstartup = 1")  # lands in a comment
    report["created"] = "2026-01-01\n[x]"
    tables = proposal_for(report, tmp_path, capsys)
    parsed = tomllib.loads(tables)
    assert list(parsed["budgets"]) == ["h100 80GB.\"x\"]\n"] and parsed["budgets"]["h100 80GB.\"x\"]\n"]["compile"] == 16.0
    assert list(parsed["variants"]) == HOSTILE
    for i, name in enumerate(HOSTILE):
        assert list(parsed["variants"][name]["budgets"]) == [HOSTILE[-1 - i] or "cpu"]
    assert "[variants.bf16-no-graphs.budgets." in tables  # bare where TOML allows


def test_a_name_that_is_not_text_is_an_error(tmp_path, capsys):
    report = sample_report()
    report["runs"]["fp32"]["device_class"] = "h100\udc80"  # a lone surrogate: TOML cannot hold it
    assert budgets_command(report, tmp_path) == 2
    assert "runs.fp32.device_class holds a lone surrogate ('\\udc80')" in capsys.readouterr().err
