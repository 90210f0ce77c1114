"""The torch backend: one ``torch.optim.Optimizer`` (``SketchplanOptimizer``) whose param groups each run a
method's update rule, and a class per method (``Adam``, ``Shampoo``, ``BlockedShampoo``, ``Sketchy``,
``ExtremeTensoring``, ``KrADagrad``, ``SOAP``; ``Adafactor``, ``Lion``, ``Muon``). Every state tensor is allocated from the method's layout in
``sketchplan.methods``; importing a module here registers its rule."""

from __future__ import annotations

from .adam import Adam
from .base import SketchplanOptimizer, group_config, group_options
from .blocked_shampoo import BlockedShampoo
from .extreme_tensoring import ExtremeTensoring
from .kradagrad import KrADagrad
from .shampoo import Shampoo
from .sketchy import Sketchy
from .soap import SOAP  # issue 19b
from .state import allocate

from .adafactor import Adafactor  # issue 19 part A
from .lion import Lion
from .muon import Muon

__all__ = ["Adam", "BlockedShampoo", "ExtremeTensoring", "KrADagrad", "Shampoo", "Sketchy", "SketchplanOptimizer",
           "SOAP", "allocate", "group_config", "group_options",
           "Adafactor", "Lion", "Muon"]
