"""Print lmms-eval's own requirements (no extras), one per line, less the names given as arguments.

`make` installs lmms-eval with --no-deps, then these: its requirements minus the ones that do
not install next to a CPU torch (see the Makefile), constrained by constraints.txt and
constraints-lmms-eval.txt.
"""

import re
import sys
from importlib.metadata import requires

skip = {name.lower().replace("_", "-") for name in sys.argv[1:]}
for requirement in requires("lmms-eval") or []:
    if "extra ==" in requirement:
        continue
    name = re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
    if name not in skip:
        print(requirement)
