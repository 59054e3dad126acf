"""Graph replay vs the same compiled decode step without a graph, per capture size (CUDA).

    python benchmarks/graph_exactness.py [--suite tiny-cpu]

Prints the max |difference| of the decode logprobs at each size: 0 means bit-identical.
"""

import argparse
import os

from titan_conformance.providers.reference import build_system
from titan_conformance.profile import load_profile

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--suite", default="tiny-cpu")
opts = parser.parse_args()
system = build_system(load_profile(opts.suite), device="cuda")
cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "default")
for size in sorted(system.generator.graphs):
    diff = (system.probe_decode(size, "graph").logprobs - system.probe_decode(size, "compiled").logprobs).abs().max().item()
    print(f"CUBLAS_WORKSPACE_CONFIG={cublas} size {size:4d}: graph vs compiled max |diff| = {diff:.3e}")
system.close()
