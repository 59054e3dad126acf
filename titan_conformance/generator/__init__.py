from titan_conformance.generator.native import Completion, NativeGenerator

__all__ = ["Completion", "NativeGenerator"]
