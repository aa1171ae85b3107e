"""The causal-lm kind: decoder language models judged by their token distributions.

record (golden by greedy generation with top-k log-probs), check (divergence,
teacher-forced, prompt positions, decode path, determinism, batch invariance), golden
(the case records), perf and perf_gate (TTFT/TPOT, budgets, perf goldens), layers and
localize (the first drifting layer), calibrate (tolerances from two good backends), and
the helpers they share (paths, decode, batch, greedy, sweep, record_summary).
"""

from specengine.kinds.base import Kind
from specengine.kinds.causal_lm import calibrate as _calibrate
from specengine.kinds.causal_lm import localize as _localize
from specengine.kinds.causal_lm.check import check_spec
from specengine.kinds.causal_lm.perf_gate import record_perf_golden
from specengine.kinds.causal_lm.record import record_golden

KIND = Kind(name="causal-lm", record=record_golden, check=check_spec,
            localize=_localize.cli_main, calibrate=_calibrate.cli_main,
            record_perf=record_perf_golden,
            record_options=frozenset({"noise", "allow_failing"}))
