"""Old import path of :mod:`tierguard.compare`, kept so custom comparators written against it still import."""

from tierguard.compare import *  # noqa: F403
from tierguard.compare import Comparator, Verdict, resolve  # noqa: F401
