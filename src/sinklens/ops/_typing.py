"""Shape annotations that cost nothing where jaxtyping is missing.

Under the test suite jaxtyping checks every annotated shape; on a server that
has only torch, numpy, einops and transformers (NDIF) the names fall back to
plain `Tensor`, so the ops still import and run.
"""

from __future__ import annotations

try:
    from jaxtyping import Bool, Float, Int
except ImportError:  # pragma: no cover - exercised on servers without jaxtyping
    from torch import Tensor

    class _Shaped:
        def __class_getitem__(cls, _item: object) -> type:
            return Tensor

    Bool = Float = Int = _Shaped  # type: ignore[misc, assignment]

__all__ = ["Bool", "Float", "Int"]
