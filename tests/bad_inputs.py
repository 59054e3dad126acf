"""Bad, unusual and hostile inputs to the suite and the CLI, each with what it must give: an exit
code, a phrase of its one-paragraph message, and no traceback. `tests/test_bad_inputs.py` runs
every case; `python tests/bad_inputs.py` prints the table (exit code and first line of each).

A case prepares its inputs in a fresh folder (`prepare(folder) -> argv`); argv[0] is "suite"
(`pytest --pyargs titan_conformance ...`) or "cli" (`titan-conformance ...`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from titan_conformance.data_files import fixture_path

TESTS = Path(__file__).resolve().parent
USAGE, FAILED, CLI_ERROR = 4, 1, 2
EAGER = "[compile]\nenable = false\n[run]\nsteps = 1\nexpect_learning = false\n"


@dataclass(frozen=True)
class Case:
    name: str
    prepare: Callable[[Path], list[str]]
    exit_code: int
    phrase: str
    """A phrase the output must hold (the cause named)."""
    once: bool = True
    """The phrase is printed once, not once per check."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment, e.g. `import_faults.py`'s modules to hide or break."""


def profile(body: str) -> Callable[[Path], list[str]]:
    def prepare(folder: Path) -> list[str]:
        (folder / "p.toml").write_text(body)
        return ["suite", "--tc-suite", str(folder / "p.toml")]
    return prepare


def checkpoint(change: Callable[[Path], None], *extra: str) -> Callable[[Path], list[str]]:
    """The tiny fixture copied, changed, and passed as --tc-model-path (with the eager profile)."""
    def prepare(folder: Path) -> list[str]:
        ckpt = folder / "ckpt"
        shutil.copytree(fixture_path("tiny-qwen3"), ckpt)
        change(ckpt)
        (folder / "p.toml").write_text(EAGER)
        return ["suite", "--tc-suite", str(folder / "p.toml"), "--tc-model-path", str(ckpt), *extra]
    return prepare


def config_change(**keys) -> Callable[[Path], None]:
    def change(ckpt: Path) -> None:
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**config, **keys}))
    return change


def tensor_change(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    def change(ckpt: Path) -> None:
        tensors = load_file(str(ckpt / "model.safetensors"))
        tensors[name] = make(tensors[name])
        save_file(tensors, str(ckpt / "model.safetensors"))
    return change


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def change(ckpt: Path) -> None:
        (ckpt / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return change


def truncate(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])


def args(*argv: str, files: dict[str, str | bytes] | None = None) -> Callable[[Path], list[str]]:
    def prepare(folder: Path) -> list[str]:
        for name, text in (files or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return [a.replace("{folder}", str(folder)) for a in argv]
    return prepare


def partial_report(folder: Path) -> None:
    from report_samples import sample_report

    from titan_conformance.report.write import write_report

    report = sample_report()
    report.update(partial=True, partial_reason="the run was interrupted (SIGTERM), gw0 in compile")
    write_report(report, folder / "partial")


def with_partial(*argv: str) -> Callable[[Path], list[str]]:
    def prepare(folder: Path) -> list[str]:
        partial_report(folder)
        return [a.replace("{folder}", str(folder)) for a in argv]
    return prepare


def with_report(text: Callable[[dict], str], *argv: str) -> Callable[[Path], list[str]]:
    """A sample report at {folder}/ok.json, and the JSON text `text` makes of it at {folder}/bad.json."""
    def prepare(folder: Path) -> list[str]:
        from report_samples import sample_report

        report = sample_report()
        (folder / "ok.json").write_text(json.dumps(report))
        (folder / "bad.json").write_text(text(report))
        return [a.replace("{folder}", str(folder)) for a in argv]
    return prepare


def base_run(**changes) -> Callable[[dict], str]:
    return lambda r: json.dumps(dict(r, runs=dict(r["runs"], base=dict(r["runs"]["base"], **changes))))


COMPARE = ("cli", "compare", "{folder}/ok.json", "{folder}/bad.json")


CASES = [
    # --- profiles ---------------------------------------------------------------------------
    Case("no such profile", args("suite", "--tc-suite", "nope"), USAGE, "No profile 'nope'"),
    Case("profile: unknown key", profile("[sampling]\nnn = 3\n"), USAGE, "Unknown profile key 'sampling.nn'"),
    Case("profile: wrong type", profile("[sampling]\nn = \"eight\"\n"), USAGE, "'sampling.n' must be int"),
    Case("profile: not TOML", profile("[sampling\nn = 3\n"), USAGE, "is not valid TOML"),
    Case("profile: unknown compile backend", profile("[compile]\nbackend = \"nonesuch\"\n"), USAGE,
         "compile.backend = 'nonesuch' is not a torch.compile backend"),
    Case("profile: unknown Inductor mode", profile("[compile]\nmode = \"fastest\"\n"), USAGE, "compile.mode = 'fastest'"),
    Case("profile: unknown Inductor option", profile("[compile]\noptions = { warp_speed = true }\n"), USAGE,
         "Unexpected optimization option warp_speed"),
    Case("profile: mode and options", profile("[compile]\nmode = \"max-autotune-no-cudagraphs\"\noptions = { max_autotune = true }\n"),
         USAGE, "not both"),
    Case("profile: Inductor's CUDA graphs inside ours", profile("[compile]\nmode = \"reduce-overhead\"\n"), USAGE,
         "captures Inductor's own CUDA graphs"),
    Case("profile: negative validation temperature", profile("[validation]\ntemperature = -0.5\n"), USAGE,
         "validation.temperature is invalid"),
    Case("profile: 10**12 steps", profile("[run]\nsteps = 1000000000000\n"), USAGE, "run.steps is invalid"),
    Case("profile: 0 steps", profile("[run]\nsteps = 0\n"), USAGE, "run.steps is invalid"),
    Case("profile: random weights without warm-up", profile(
        "[model]\ncheckpoint = \"random\"\n[model.config]\nmodel_type = \"qwen3\"\nhidden_size = 64\nnum_hidden_layers = 1\n"
        "num_attention_heads = 2\nnum_key_value_heads = 1\nhead_dim = 32\nintermediate_size = 64\nvocab_size = 32\n"),
        USAGE, "model.warmup_steps is invalid"),
    Case("profile: TP degree that does not divide the checkpoint's heads", profile(
        "[parallel]\ntp = 3\n"), USAGE, "parallel.tp = 3 does not divide"),
    Case("profile: unknown variant key", profile("[variants.x.model]\ndtypo = \"float32\"\n"), USAGE,
         "'variants.x.model.dtypo'"),
    # --- checkpoints ------------------------------------------------------------------------
    Case("checkpoint folder missing", args("suite", "--tc-model-path", "{folder}/nowhere"), USAGE, "does not exist"),
    Case("config.json is a JSON list", checkpoint(write("config.json", "[1, 2]")), USAGE, "holds a JSON list"),
    Case("config.json is not JSON", checkpoint(write("config.json", "{hidden_size: ")), USAGE, "is not readable JSON"),
    Case("config.json: 0 layers", checkpoint(config_change(num_hidden_layers=0)), USAGE, "num_hidden_layers = 0"),
    Case("config.json: another architecture", checkpoint(config_change(model_type="llama", architectures=["LlamaForCausalLM"])),
         USAGE, "unsupported architecture"),
    Case("config.json: heads the TP degree does not divide", checkpoint(config_change(num_attention_heads=6, num_key_value_heads=3),
         "--tc-suite", "tiny-cpu-tp2"), USAGE, "parallel.tp = 2 does not divide"),
    Case("weights truncated", checkpoint(truncate), FAILED, "is not a readable safetensors file"),
    Case("weights missing", checkpoint(lambda c: (c / "model.safetensors").unlink()), FAILED, "the weights are missing"),
    Case("an int64 tensor among the weights", checkpoint(tensor_change(
        "model.layers.0.mlp.up_proj.weight", lambda t: t.to(torch.int64))), FAILED, "is int64 where the model's weight is float32"),
    Case("a tensor of another shape", checkpoint(tensor_change(
        "model.layers.0.mlp.up_proj.weight", lambda t: t[:-1])), FAILED, "has shape"),
    # --- providers --------------------------------------------------------------------------
    Case("provider: a callable that is not a factory", args("suite", "--tc-system", "os:getcwd"), USAGE, "is not a factory"),
    Case("provider: a module that does not import", args("suite", "--tc-system", "nowhere:factory"), USAGE,
         "cannot import 'nowhere'"),
    Case("provider: an entry point that is not installed", args("suite", "--tc-system", "nonesuch"), USAGE,
         "No system provider 'nonesuch'"),
    Case("provider: returns an object without the protocol", args("suite", "--tc-variant", "base", "--tc-system", "bad_providers:returns_object"),
         FAILED, "lacks name, capabilities, startup, device, describe, close"),
    Case("provider: raises while building", args("suite", "--tc-variant", "base", "--tc-system", "bad_providers:raises"), FAILED,
         "RuntimeError: the provider's own bug"),
    Case("provider: calls sys.exit", args("suite", "--tc-variant", "base", "--tc-system", "bad_providers:exits"), FAILED,
         "called sys.exit while building"),
    Case("provider: lacks a method its capability needs", args("suite", "--tc-variant", "base", "--tc-system", "bad_providers:half_a_protocol"),
         FAILED, "lacks step, validate, rollout, task"),
    # --- options and files ------------------------------------------------------------------
    Case("report folder is a file", args("suite", "--tc-report-dir", "{folder}/f", files={"f": "x"}), USAGE, "is a file, not a folder"),
    Case("report folder cannot be made", args("suite", "--tc-report-dir", "/proc/self/tc-report"), USAGE, "is not writable"),
    Case("compile cache: an unrelated file", args("suite", "--tc-compile-cache", "{folder}/notes.txt",
         files={"notes.txt": "my notes"}), USAGE, "is not a compile cache written by titan_conformance"),
    Case("compile cache: a folder", args("suite", "--tc-compile-cache", "{folder}"), USAGE, "is a folder"),
    Case("timeout of 0", args("suite", "--tc-timeout", "0"), USAGE, "--tc-timeout 0"),
    Case("timeout not a number", args("suite", "--tc-timeout", "soon"), USAGE, "invalid float value"),
    Case("CUDA without a GPU", args("suite", "--tc-device", "cuda"), USAGE, "sees no CUDA device"),
    Case("timeout inf", args("suite", "--tc-timeout", "inf"), USAGE, "--tc-timeout inf"),
    Case("timeout 1e300", args("suite", "--tc-timeout", "1e300"), USAGE, "--tc-timeout 1e+300"),
    Case("seed 2**63", args("suite", "--tc-seed", str(2**63)), USAGE, f"--tc-seed {2**63}"),
    Case("--tc-variant naming nothing", args("suite", "--tc-variant", ","), USAGE, "names no variant"),
    Case("variant name with a slash", profile('[variants."a/b".run]\nsteps = 1\n'), USAGE, "variant name 'a/b' is not allowed"),
    Case("variant name with a slash, with a compile cache", lambda f: [*profile('[variants."x/../y".run]\nsteps = 1\n')(f),
         "--tc-compile-cache", str(f / "cache.bin")], USAGE, "variant name 'x/../y' is not allowed"),
    # --- what the user named cannot run: a usage error, never a green session of skips ------
    Case("torchtitan named but not installed", args("suite", "--tc-system", "torchtitan"), USAGE,
         "torchtitan is not installed", env=(("TC_TEST_HIDE", "torchtitan"),)),
    Case("torchtitan installed but broken", lambda f: [*profile(EAGER + '[torchtitan]\nflavor = "debugmodel"\n')(f),
         "--tc-system", "torchtitan"], FAILED,
         "`import torchtitan.models.qwen3` failed", env=(("TC_TEST_BREAK", "torchtitan.models.qwen3"),)),
    Case("profile's own vLLM backend where vLLM is not installed", lambda f: [
         *profile('[generator]\nbackend = "vllm"\n')(f), "--tc-generator", "auto"], USAGE,
         "runs the vLLM generator, which does not import here", env=(("TC_TEST_HIDE", "vllm"),)),
    Case("a variant named with --tc-variant whose vLLM is not installed", args(
         "suite", "--tc-suite", "qwen3-0.6b", "--tc-variant", "vllm", "--tc-generator", "auto"), USAGE,
         "variant 'vllm' runs the vLLM generator", env=(("TC_TEST_HIDE", "vllm"),)),
    # --- the CLI ----------------------------------------------------------------------------
    Case("grpo --steps 0", args("cli", "grpo", "--steps", "0"), CLI_ERROR, "not >= 1"),
    Case("grpo --steps -1", args("cli", "grpo", "--steps", "-1"), CLI_ERROR, "not >= 1"),
    Case("grpo: config.json a list", lambda f: ["cli", "grpo", "--model-path", checkpoint(write("config.json", "[]"))(f)[-1]],
         CLI_ERROR, "holds a JSON list"),
    Case("grpo: no such profile", args("cli", "grpo", "--suite", "nope"), CLI_ERROR, "No profile 'nope'"),
    Case("compare: a partial report", with_partial("cli", "compare", "{folder}/partial/report.json",
         "{folder}/partial/report.json"), CLI_ERROR, "is a partial report"),
    Case("budgets: a partial report", with_partial("cli", "budgets", "{folder}/partial/report.json"), CLI_ERROR,
         "is a partial report"),
    Case("compare: no such report", args("cli", "compare", "{folder}/a.json", "{folder}/b.json"), CLI_ERROR, "No report at"),
    Case("compare: a step without times", with_report(base_run(steps=[{}]), *COMPARE), CLI_ERROR,
         "runs['base'].steps[0] has no 'times'"),
    Case("compare: a startup time that is a list", with_report(base_run(startup={"compile": [8.0]}), *COMPARE), CLI_ERROR,
         "runs['base'].startup.compile is a list, not a number"),
    Case("compare: JSON nested 100000 deep", with_report(
         lambda r: json.dumps(r)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", *COMPARE), CLI_ERROR,
         "nested deeper than the decoder can follow"),
    Case("compare: a variant name that is not text", with_report(
         lambda r: json.dumps(r).replace('"fp32"', '"fp32\\udc80"'), *COMPARE), CLI_ERROR, "holds a lone surrogate"),
    Case("compare --threshold nan", with_report(json.dumps, *COMPARE, "--threshold", "nan"), CLI_ERROR,
         "argument --threshold: nan is not a finite number >= 0"),
    Case("compare --min-seconds nan", with_report(json.dumps, *COMPARE, "--min-seconds", "nan"), CLI_ERROR,
         "argument --min-seconds: nan is not a finite number >= 0"),
    Case("budgets: a run whose checks failed", with_report(
         lambda r: json.dumps(dict(r, tests=[dict(t, outcome="failed") for t in r["tests"]])), "cli", "budgets",
         "{folder}/bad.json"), CLI_ERROR, "failed test(s)"),
]


def command(argv: list[str]) -> list[str]:
    if argv[0] == "suite":
        generator = [] if "--tc-generator" in argv else ["--tc-generator", "native"]
        return [sys.executable, "-m", "pytest", "--pyargs", "titan_conformance", "-p", "no:cacheprovider",
                "-p", "import_faults", "--tc-device", "cpu", *generator, *argv[1:]]
    return [sys.executable, "-m", "titan_conformance.cli", *argv[1:]]


def run_case(case: Case, folder: Path) -> subprocess.CompletedProcess:
    argv = case.prepare(folder)
    if "--tc-report-dir" not in argv and argv[0] == "suite":
        argv += ["--tc-report-dir", str(folder / "report")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]), **dict(case.env))
    return subprocess.run(command(argv), cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def first_line(proc: subprocess.CompletedProcess, phrase: str) -> str:
    lines = (proc.stdout + proc.stderr).splitlines()
    return next((ln.strip() for ln in lines if phrase in ln), next((ln for ln in lines if "rror" in ln), ""))[:160]


def main() -> None:
    print("| # | input | exit | first line |\n| --- | --- | --- | --- |")
    for i, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            proc = run_case(case, Path(tmp))
        print(f"| {i} | {case.name} | {proc.returncode} | {first_line(proc, case.phrase).replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    main()
