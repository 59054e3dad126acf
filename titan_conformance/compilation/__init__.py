from titan_conformance.profile.compile_config import CompileConfig  # the profile's section, used by every compile
from titan_conformance.compilation.ledger import CompileEvent, CompileLedger

__all__ = ["CompileConfig", "CompileEvent", "CompileLedger", "apply_regional_compile"]


def __getattr__(name: str):
    # The model and its Triton kernels come with `regional`: the pytest controller imports this
    # package (through the protocol) but compiles nothing, so it does not pay for them.
    if name == "apply_regional_compile":
        from titan_conformance.compilation.regional import apply_regional_compile

        return apply_regional_compile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
