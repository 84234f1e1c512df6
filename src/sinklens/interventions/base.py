"""Former home of the run machinery, now `sinklens.run` (kept so that existing imports keep working)."""

from sinklens.run.core import (  # noqa: F401
    Hook,
    HookFn,
    Intervention,
    Member,
    Members,
    ModuleWeights,
    RunContext,
    apply_point,
    hooks_of,
    module_weights,
    ordered_hooks,
    resolve_layers,
)
