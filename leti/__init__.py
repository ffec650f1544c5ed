"""leti: latency estimator for neural networks on mobile GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Estimator", "Prediction", "__version__"]

if TYPE_CHECKING:
    from leti.core.records import Prediction
    from leti.predict.estimator import Estimator


def __getattr__(name: str) -> Any:
    # Lazy, so `import leti` (e.g. for the client in a NAS loop) does not pull in xgboost.
    if name == "Estimator":
        from leti.predict.estimator import Estimator

        return Estimator
    if name == "Prediction":
        from leti.core.records import Prediction

        return Prediction
    raise AttributeError(name)
