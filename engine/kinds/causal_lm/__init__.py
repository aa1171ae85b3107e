"""The causal-lm kind: decoder language models judged by their token distributions.

kind (the hooks into the one record/check skeleton), golden (the typed golden codec),
context and check (one case's context and its ordered list of checks: greedy, expect,
one_pass, decode, consistency, determinism, batch), limits (what judges a case, per
numeric class and path), record and noise (recording the reference, and its own noise),
perf, perf_gate and perf_golden (TTFT/TPOT, budgets, perf goldens), layers, localize and
localize_decode (the first drifting layer), calibrate (limits from two good backends),
sweep and record_summary (notes and what record-golden prints).
"""

from specengine.kinds.causal_lm.calibrate import measure
from specengine.kinds.causal_lm.kind import CausalLm
from specengine.kinds.causal_lm.localize import localize_spec
from specengine.kinds.causal_lm.perf_gate import record_perf_golden

KIND = CausalLm()
KIND.localize = localize_spec                 # `specengine localize`
KIND.calibrate = measure                      # `specengine calibrate`
KIND.record_perf = record_perf_golden         # `record-golden --perf`
