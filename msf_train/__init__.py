"""msf_train: configs, models, the MSF maths and (later) training. Imports stay light: torch only."""
from msf_train.errors import MsfError

__all__ = ["MsfError"]
__version__ = "0.1.0"
