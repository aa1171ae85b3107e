"""Operator specs (`ops:` instead of `model:` + `cases:`): single operators measured on a
backend's device and dtype against a float64 oracle.

For each op: inputs are drawn in float64 from the op's seed (spec.ops_catalog),
rounded to the compute dtype (the backend's, or the op's `dtype`), and run

* on the candidate backend (`Backend.run_op`, on its device, in that dtype), and
* as the oracle: the same implementation in float64 on the CPU, on the same rounded
  inputs — so what is measured is the operator's own error, not its inputs' rounding.

Reported per output: cosine (min over rows), max abs / max relative error, the shares of
elements with relative error under 0.001 and 0.005, and the error relative to what the
dtype can achieve (`dtype_error_ratio`, compare.arrays). MoE routing also
compares the selected expert ids (a disagreement is a near-tie when the reference's scores
of the swapped experts differ by less than twice the candidate's own measured score error
on that token) and the routing weights of the tokens whose expert sets agree.

`--against B` compares with backend B live instead of the oracle (the dtype ratio stays
against the oracle). Per op, a comparison whose two sides ran on the same runtime, device
family and dtype is labelled a self-check; it shows repeatability only, never a
cross-device pass.

Goldens: `record-golden` on an ops spec stores, per op, the hash of its settings, the
sha256 of its float64 inputs and the recording backend's metrics
(golden/<spec>/<backend>.json, schemas/ops-golden.schema.json). `check` uses the golden of
the spec's reference backend when it exists — stale settings or different inputs are exit
2, and the reference's numbers are shown next to the candidate's — and works without one,
since the oracle is computed live.
"""

from specengine.kinds.ops.kind import Ops

KIND = Ops()
