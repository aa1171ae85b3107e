"""`specengine` as the tests' CLI subprocesses run it: the real command line, with the
test suite's runtimes registered first (runtimes.py).

A test runs this file as the program (`python tests/cli_main.py ARGS`), so what it
registers is chosen by the test, never by a spec: the product itself has no switch, file
or variable that would load these runtimes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtimes import register  # noqa: E402

register()

from specengine.cli import entry  # noqa: E402

entry()
