import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("SPECENGINE_PROGRESS", "0")
# pytest-xdist workers ignore SIGINT, and an ignored signal stays ignored in the processes
# they start: the interrupt tests' children would never see Ctrl-C. Python's own handler
# here means children start with the default again.
if os.environ.get("PYTEST_XDIST_WORKER"):
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from helpers import SMOLLM2_SPEC  # noqa: E402
from runtimes import register as _register_test_runtimes  # noqa: E402

_register_test_runtimes()   # test-slow, test-fault: the suite's own runtimes


@pytest.fixture(scope="session")
def specengine_wheel() -> Path:
    """This checkout built as a wheel (python -m build: sdist, then the wheel from it),
    once per content, in the cache folder."""
    from wheel_env import built_wheel

    return built_wheel()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2 HF folder (converted once into the cache folder)."""
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    return resolve(load_spec(SMOLLM2_SPEC).model).hf_dir
