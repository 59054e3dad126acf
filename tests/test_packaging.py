"""A plain (non-editable) install carries everything `pytest --pyargs titan_conformance` needs."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_suite_profiles_fixture_and_plugin(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("titan_conformance-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "titan_conformance/conformance/test_logprob_parity.py",
        "titan_conformance/conformance/test_recompile_budget.py",
        "titan_conformance/suites/tiny-cpu.toml",
        "titan_conformance/suites/qwen3-0.6b.toml",
        "titan_conformance/fixtures/tiny-qwen3/model.safetensors",
        "titan_conformance/fixtures/tiny-qwen3/config.json",
        "titan_conformance/fixtures/tiny-qwen3/tokenizer.json",
        "titan_conformance/report/templates/report.html.j2",
    ):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text and "titan_conformance.plugin" in text
