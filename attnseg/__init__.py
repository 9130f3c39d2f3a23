"""attnseg: attention-driven image segmentation on one engine."""

__version__ = "0.1.0"

from .api import Predictor, Result, load  # noqa: E402
from .data.labels import LabelSpec  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["LabelSpec", "Predictor", "Result", "create_model", "list_models", "load", "__version__"]
