"""Specs: load (safe YAML), validate (JSON Schema + each kind's keys), resolve defaults.

`load` reads and builds; `model` holds the dataclasses; `causal_lm`, `embedding` and `ops`
build each kind's cases; `keys` says which keys each kind accepts; `paths` expands the
paths a spec names; `yamlio` parses YAML with positions; `long_prompt` makes long prompts
by recipe; `ops_catalog` lists the operators an ops spec can name. Nothing here imports
torch, transformers or onnxruntime.

This module re-exports the names callers use most.
"""

from specengine.compare.limits import LimitSource, Limits
from specengine.compare.tolerances import EmbeddingTolerance, OpTolerance, Tolerance
from specengine.spec.load import load_spec, parse_spec, schema, validate_schema
from specengine.spec.model import (MAX_SPEC_BYTES, OUTPUTS, AnyCase, Case, Determinism,
                                   EmbeddingCase, EmbeddingSettings, ModelSpec, OpCase, Spec)
from specengine.spec.paths import find_specs

__all__ = ["MAX_SPEC_BYTES", "OUTPUTS", "AnyCase", "Case", "Determinism", "EmbeddingCase",
           "EmbeddingSettings", "EmbeddingTolerance", "ModelSpec", "OpCase", "OpTolerance",
           "Spec", "Tolerance", "LimitSource", "Limits", "find_specs", "load_spec", "parse_spec",
           "schema", "validate_schema"]
