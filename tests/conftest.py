"""Test setup: 8 fake CPU devices for every test, strict numpy rank promotion, loud empty runs."""

import os

_xla = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _xla:
    os.environ["XLA_FLAGS"] = f"{_xla} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run (xdist workers and the CLI subprocesses
# inherit it): tests that build the same tiny models reuse each other's executables.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"blt-jax-test-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import json  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 worker bug (see guides/JAX_STACK.md §7)
jax.config.update("jax_numpy_rank_promotion", "raise")

DATA = pathlib.Path(__file__).parent / "data"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    if session.testscollected == 0 and not session.config.option.collectonly:
        print("\nERROR: pytest collected no tests -- refusing to report success.")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def fixture_sentence():
    """The paper's Figure 4 sentence: ids, stored entropies and patch starts (81 rows)."""
    d = json.loads((DATA / "tokens_with_entropies.json").read_text())
    col = lambda k: [d[k][str(i)] for i in range(len(d[k]))]  # noqa: E731
    return {"ids": np.array(col("token_ids"), np.int32),
            "entropies": np.array(col("entropies"), np.float32),
            "start": np.array(col("start"), bool), "patch": np.array(col("patch"))}
