"""Providers that are wrong in themselves (not systems with a planted fault): for the bad-input cases."""

from __future__ import annotations

import torch


def returns_object(profile, device="cpu", model_path=None):
    return object()


def raises(profile, device="cpu", model_path=None):
    raise RuntimeError("the provider's own bug")


def exits(profile, device="cpu", model_path=None):
    raise SystemExit(3)


class _HalfASystem:
    """Declares GRPO steps but has none of their methods; its close() fails too."""

    name = "half"
    capabilities = frozenset({"grpo"})
    startup: dict = {}
    device = torch.device("cpu")

    def describe(self):
        return {}

    def close(self):
        raise RuntimeError("close() of a broken provider")


def half_a_protocol(profile, device="cpu", model_path=None):
    return _HalfASystem()


def slow_compile(profile, device="cpu", model_path=None):
    """The reference system whose trainer compile takes a minute (and says when it has begun)."""
    import time
    from pathlib import Path

    from titan_conformance.providers.grpo import GRPOSystem
    from titan_conformance.providers.reference.stack import ReferenceStack

    class SlowCompile(ReferenceStack):
        def compile_trainer(self, ctx, trainer):
            Path("started").write_text("")
            time.sleep(60)

    return GRPOSystem(profile, SlowCompile(), device=device, model_path=model_path)


def fails_after_compile(profile, device="cpu", model_path=None):
    """The reference system, compiled, whose GRPO steps raise."""
    from titan_conformance.providers.reference import build_system

    system = build_system(profile, device=device, model_path=model_path)

    def step():
        raise RuntimeError("planted: the run fails after compile")

    system.step = step
    return system


class _Leaky:
    """A system that passes the protocol and leaves a non-daemon thread and a child process running
    after close(), as a provider that forgets its engine's threads or server would."""

    name = "leaky"
    capabilities = frozenset()
    startup: dict = {}
    device = torch.device("cpu")

    def __init__(self) -> None:
        import subprocess
        import threading
        from pathlib import Path

        self._stop = threading.Event()
        threading.Thread(target=self._stop.wait, name="leaky-engine-loop").start()  # non-daemon, never set
        child = subprocess.Popen(["sleep", "600"])
        Path("leaky.pid").write_text(str(child.pid))

    def describe(self):
        return {}

    def close(self):
        pass


def leaky(profile, device="cpu", model_path=None):
    return _Leaky()
