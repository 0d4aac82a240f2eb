"""mpcache: a secret-sharing engine (replicated 3PC and dealer-assisted 2PC over Z_2^64)
with a transformer stack and MPCache KV-cache eviction on top.

Start with :class:`Session` and a job function; see README.md.
"""
from .ring import FixedPoint, FixedPointRangeError
from .runtime import Party, PartyFailed, RunResult, Session
from .tensor import SecretTensor, SessionMismatch, concatenate, stack
from .functions import gather, maximum, minimum, one_hot, where   # attaches the methods

__version__ = "0.1.0"

__all__ = ["Session", "Party", "RunResult", "PartyFailed", "SecretTensor", "FixedPoint",
           "FixedPointRangeError", "SessionMismatch", "concatenate", "stack", "where",
           "one_hot", "gather", "maximum", "minimum", "__version__"]
