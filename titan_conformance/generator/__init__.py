from titan_conformance.generator.base import Generator, GeneratorConfig
from titan_conformance.generator.native import NativeGenerator

__all__ = ["Generator", "GeneratorConfig", "NativeGenerator"]
