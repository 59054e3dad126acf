from titan_conformance.profile.compile_config import CompileConfig  # the profile's section, used by every compile
from titan_conformance.compilation.ledger import CompileEvent, CompileLedger
from titan_conformance.compilation.regional import apply_regional_compile

__all__ = ["CompileConfig", "CompileEvent", "CompileLedger", "apply_regional_compile"]
