"""fsg_core: binary neural network training in pure PyTorch (layers, estimators, models, data, loop).

It imports nothing of the service: no Ray, no FastAPI, no SQLAlchemy.
"""

from fsg_core.estimators import build_estimator, describe, names
from fsg_core.spec import TrainSpec

__all__ = ["TrainSpec", "build_estimator", "describe", "names"]
