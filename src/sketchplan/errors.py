"""The exceptions for mistakes a user can make; the CLI prints their message and exits with code 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A problem with the user's input, stated in one sentence that names the thing and the fix."""


class MissingExtra(UserError, ImportError):
    """An optional framework or library is not installed; the message names the extra that installs it.

    It is an ``ImportError`` too, so code that probes for an optional dependency keeps working."""


#: Package → the ``sketchplan`` extra that installs it.
EXTRAS = {"torch": "torch", "jax": "jax", "optax": "jax", "transformers": "hf", "matplotlib": "plot",
          "pynvml": "nvml"}


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a ``MissingExtra`` saying ``purpose`` needs it and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingExtra(f"{purpose} needs {top}, which is not installed; install it with "
                           f"`pip install 'sketchplan[{extra}]'`.") from None
