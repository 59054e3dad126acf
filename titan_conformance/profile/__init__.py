"""The package's config layer: conformance profiles, typed and validated, with their variants."""

from titan_conformance.profile.compile_config import CompileConfig
from titan_conformance.profile.cudagraph import CudagraphMode, padded_size, policy_capture_sizes
from titan_conformance.profile.loading import (
    Variant, bundled_profiles, check_tp, load_profile, profile_variants, suite_variants,
)
from titan_conformance.profile.sampling import LogprobSemantics, SamplingSpec
from titan_conformance.profile.sections import (
    Budget, FloorRatio, GRPOConfig, Profile, SpeedSection, Tolerance, Tolerances,
)

__all__ = [
    "Budget", "CompileConfig", "CudagraphMode", "FloorRatio", "GRPOConfig", "LogprobSemantics", "Profile", "SamplingSpec", "SpeedSection", "Tolerance",
    "Tolerances", "bundled_profiles", "check_tp", "load_profile", "padded_size", "policy_capture_sizes",
    "Variant", "profile_variants", "suite_variants",
]
