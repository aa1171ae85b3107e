"""Pure comparison functions, numpy in and dataclasses out, no runtime and no spec:
token distributions (tokens), feature arrays (arrays), per-layer hidden states (layers),
layer sketches (sketch), whole-spec distribution statistics (distribution) and the
dtype-aware default tolerances (tolerances)."""
