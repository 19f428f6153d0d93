"""Engine lanes: tests/integrations/<engine>/ runs only in that engine's own environment.

The engines (TRL, verl, vLLM) have conflicting pins, so each has a lane, `bash .ci/lanes/<engine>.sh`, that builds
`.lanes/<engine>/` from scratch and runs `pytest tests/integrations/<engine>` with `TOKENCREDIT_LANE=<engine>`
(docs/engines.md). Without that variable (the main suite, whose environment has no engine) nothing here is
collected. With it:
- only that engine's folder is collected;
- the engine is imported right here, so a lane whose engine is missing or broken errors out before any test;
- a skipped test fails the run: a lane never passes by skipping.
Naming a folder here explicitly without the matching TOKENCREDIT_LANE is a usage error, not a silent no-op.
"""

from __future__ import annotations

import importlib
import os

import pytest

from tokencredit.models import create_tiny_model

# lane name -> the module that must import in that lane (the browser lane: the inspector page in Chromium)
ENGINES = {"trl": "trl", "verl": "verl", "vllm": "vllm", "browser": "playwright"}

LANE = os.environ.get("TOKENCREDIT_LANE", "")
if LANE and LANE not in ENGINES:
    raise pytest.UsageError(f"TOKENCREDIT_LANE: expected one of {sorted(ENGINES)}, got {LANE!r}")

# paths relative to this folder that pytest does not collect
collect_ignore = [engine for engine in ENGINES if engine != LANE]

if LANE:
    importlib.import_module(ENGINES[LANE])  # ImportError here fails the lane; never skip

_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # reached only when a path in here was named explicitly (collect_ignore covers the main suite's run)
    here = os.path.dirname(__file__)
    named = sorted({os.path.relpath(str(item.path), here).split(os.sep)[0] for item in items
                    if str(item.path).startswith(here + os.sep)} - {LANE})
    if named:
        raise pytest.UsageError(
            f"tests/integrations/{named[0]} runs only in its lane: `bash .ci/lanes/{named[0]}.sh` "
            f"(or TOKENCREDIT_LANE={named[0]} inside .lanes/{named[0]}/), see docs/engines.md"
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if LANE and report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if LANE and _skipped and exitstatus == 0:
        print(f"\n[lane {LANE}] FAILED: {len(_skipped)} test(s) skipped, a lane never skips: {_skipped}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """The project's default embedded model (tokencredit.models.create_tiny_model, seed 0), saved to a folder."""
    return create_tiny_model(tmp_path_factory.mktemp("tiny-default"), seed=0)
