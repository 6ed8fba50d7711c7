"""dualtrain: one Keras 3 recipe, trained on PyTorch eager or TensorFlow graph-compiled.

Importing dualtrain imports neither torch nor tensorflow; an engine imports its framework when a
run selects it. From Python: `dualtrain.fit`, `dualtrain.evaluate`, `dualtrain.load_model`
(docs/notebook.md).
"""

__version__ = "0.1.0"

from dualtrain.api import Run, evaluate, fit
from dualtrain.data import DataInfo
from dualtrain.errors import ConfigError, DualtrainError, RunError
from dualtrain.loading import load_model
from dualtrain.settings import Settings

__all__ = [
    "ConfigError",
    "DataInfo",
    "DualtrainError",
    "Run",
    "RunError",
    "Settings",
    "__version__",
    "evaluate",
    "fit",
    "load_model",
]
