"""`model.kind: embedding`: text encoders and vision towers judged by their features.

For each case (a batch of texts, image files or seeded synthetic images) the reference
golden stores the pooled feature of every input and the last hidden state of every
non-padding token (kinds.embedding.golden says how). `check` runs the candidate on
the same inputs and compares, per output (compare.arrays has the
definitions): cosine similarity (minimum over inputs, resp. tokens), max abs error, max
relative error, and the shares of elements with relative error under 0.001 and 0.005;
then repeats the case (`determinism.runs`) for bit-identical outputs. Tolerances come
from `defaults.tolerance` with per-case overrides. `check --perf` measures inputs/s and
batch latency per batch size.

Pooling is done here, in float64 from the backend's last hidden state (or the model's own
pooler output), so every backend is pooled the same way.
"""

from specengine.kinds.embedding.kind import Embedding

KIND = Embedding()
