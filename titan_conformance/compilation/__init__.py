from titan_conformance.compilation.config import CompileConfig
from titan_conformance.compilation.ledger import CompileEvent, CompileLedger
from titan_conformance.compilation.regional import apply_regional_compile

__all__ = ["CompileConfig", "CompileEvent", "CompileLedger", "apply_regional_compile"]
