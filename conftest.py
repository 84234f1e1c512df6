"""Collection rules for the whole tree: shape checking, the hypothesis profile, optional extras.

Shape checking: jaxtyping's import hook, with beartype, checks every call of the
modules whose signatures carry shapes (`SHAPED`: the pure ops, the image spans,
the run context), binding axis names across arguments and results. A checker
wraps each function, and a wrapper cannot be pickled by value, which is how a
remote request ships sinklens' code (`nnsight.register`). So the tests that
ship code in this process are marked `ships` and run in a session of their own
without the hook: `SINKLENS_NO_SHAPE_CHECKS=1 pytest -m ships`. `make test` runs both
sessions; a session with shape checks leaves the `ships` tests out and says so.
Nothing is patched: the hook is installed here, when pytest imports this file
(before tests/conftest.py first imports sinklens), and only where shapes are declared, so every other module (the interventions'
own checks of their Literal modes included) runs as it does for a user.

Hypothesis: the `ci` profile (the default) is derandomized, so a run tries the
same examples every time and a red run always means the change; `dev` draws
afresh (`--hypothesis-profile dev`, or HYPOTHESIS_PROFILE=dev).
"""

import importlib.util
import os

import pytest
from hypothesis import settings

# Under pytest-xdist (`make test` runs `pytest -n auto`) the workers share the machine's cores: each runs torch,
# and the subprocesses it starts (CLI, studies, notebook kernels), on one thread, set here before any of them
# imports torch, instead of every worker spreading over every core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

SHAPED = ("sinklens.ops", "sinklens.models.spans", "sinklens.run.context")
SHAPE_CHECKS = os.environ.get("SINKLENS_NO_SHAPE_CHECKS") != "1"
if SHAPE_CHECKS:
    from jaxtyping import install_import_hook

    install_import_hook(SHAPED, "beartype.beartype")

settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

collect_ignore = []
if importlib.util.find_spec("lmms_eval") is None:
    # the lmms-eval model imports lmms-eval (an optional extra); `make test` runs tests/test_lmms_eval.py in .venv-lmms
    collect_ignore.append("src/sinklens/integrations/lmms_eval/model.py")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ships: ships sinklens' code by value to a (simulated) server; runs with SINKLENS_NO_SHAPE_CHECKS=1"
    )


def pytest_collection_modifyitems(config, items):
    if not SHAPE_CHECKS:
        return
    ships = [item for item in items if "ships" in item.keywords]
    if ships:
        items[:] = [item for item in items if "ships" not in item.keywords]
        config.hook.pytest_deselected(items=ships)
        config.stash[_SHIPS] = len(ships)


_SHIPS = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    n = config.stash.get(_SHIPS, 0)
    if n:
        terminalreporter.write_line(
            f"{n} tests marked `ships` left for the session without shape checks: SINKLENS_NO_SHAPE_CHECKS=1 pytest -m ships "
            "(make test runs it)"
        )
