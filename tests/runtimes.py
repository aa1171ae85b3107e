"""The test suite's own runtimes, registered into specengine's backend registry.

`test-slow` (the torch runtime sleeping per forward step, slow_backend.py) and
`test-fault` (the torch runtime with injected faults, fault_backend.py) are not part of
the product: a spec can name them only in a process that called `register()` — pytest
through conftest.py, and the CLI subprocesses of the tests through cli_main.py. A spec run
by the installed `specengine` command gets "unknown runtime" for them.
"""

from __future__ import annotations

TEST_RUNTIMES = {
    "test-slow": "slow_backend:SlowTorchBackend",
    "test-fault": "fault_backend:FaultBackend",
}


def register() -> None:
    from specengine.backends.registry import register_runtime

    for runtime, target in TEST_RUNTIMES.items():
        register_runtime(runtime, target)
