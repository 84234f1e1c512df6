"""Collection rules for the whole tree: the doctests of src/sinklens are collected with the tests."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("lmms_eval") is None:
    # the lmms-eval model imports lmms-eval (an optional extra); `make test` runs tests/test_lmms_eval.py in .venv-lmms
    collect_ignore.append("src/sinklens/integrations/lmms_eval/model.py")
