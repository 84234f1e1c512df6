"""Former home of the run machinery, now `sinklens.run` (kept so that existing imports keep working)."""

from sinklens.run import *  # noqa: F401,F403  (every public name of sinklens.run, as before and more)
