"""dualtrain: one Keras 3 recipe, trained on PyTorch eager or TensorFlow graph-compiled.

Importing dualtrain imports neither torch nor tensorflow; an engine imports its framework when a
run selects it.
"""

__version__ = "0.1.0"

from dualtrain.data import DataInfo
from dualtrain.errors import ConfigError, DualtrainError, RunError
from dualtrain.settings import Settings

__all__ = ["ConfigError", "DataInfo", "DualtrainError", "RunError", "Settings", "__version__"]
