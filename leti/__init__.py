"""leti: latency estimator for neural networks on mobile GPUs.

The public surface is small on purpose: `Estimator` (load one SoC's models, predict one graph
or a batch), `Prediction` (what it answers), `available` (which SoCs and runtimes can answer,
and where their numbers come from), `LetiError` (the base of every error a user can cause) and
`__version__`. Everything else lives in the subpackages (see the README's layout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leti.core.errors import LetiError
from leti.core.version import VERSION as __version__

__all__ = ["Estimator", "LetiError", "Prediction", "__version__", "available"]

if TYPE_CHECKING:
    from leti.core.records import Prediction
    from leti.predict.estimator import Estimator
    from leti.predict.registry import available


def __getattr__(name: str) -> Any:
    # Lazy, so `import leti` (e.g. for the client in a NAS loop) does not pull in xgboost.
    if name == "Estimator":
        from leti.predict.estimator import Estimator

        return Estimator
    if name == "Prediction":
        from leti.core.records import Prediction

        return Prediction
    if name == "available":
        from leti.predict.registry import available

        return available
    raise AttributeError(f"module 'leti' has no attribute {name!r}")
