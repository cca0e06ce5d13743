"""Compute backends behind one interface (see base.py), and where a model's parts run."""

from embedkit.backend.base import Array, Backend, KVCache, Weight
from embedkit.backend.placement import Placement, cpu_placement, make_placement

__all__ = ["Array", "Backend", "KVCache", "Placement", "Weight", "cpu_placement", "make_placement"]
