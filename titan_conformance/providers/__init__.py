"""The bundled system providers, siblings behind the provider protocol: `reference` (our Qwen3) and
`torchtitan` (torchtitan's own components). Both compose the shared GRPO system (`grpo.py`) with a
model stack of their own; the plugin knows them only through the `titan_conformance.systems`
entry points, as it knows any team's."""
