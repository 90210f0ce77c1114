"""Names of JAX pytree leaves, shared by the planner (which names parameters) and the optax backend (which
finds each parameter's plan entry by the same name). Framework-free: it reads key-path entries by attribute."""

from __future__ import annotations


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def key_path_name(path) -> str:
    """``(DictKey('params'), DictKey('Dense_0'), DictKey('kernel'))`` → ``params/Dense_0/kernel``."""
    return "/".join(_key_name(k) for k in path)
