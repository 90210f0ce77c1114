"""Per-device optimizer-state bytes of a plan on a JAX device mesh (framework-free).

``device_state_bytes(plan, mesh, specs)``: each device's bytes of the plan's state when the optax
transformation built from it (``build_optax``) runs on ``mesh`` with the parameters split by ``specs`` —
``methods.mesh_placement``'s rule applied to every planned tensor's layout (elementwise state split like its
parameter, stacked blocks split along the block axis where the count divides the device count, the rest
replicated), plus the transformation's int32 step counter on every device. ``parse_mesh("data=4,model=2")``
reads the CLI form of a mesh.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

from ..errors import UserError
from ..methods import state_layout
from ..methods.mesh_placement import Spec, tensor_device_bytes

if TYPE_CHECKING:
    from .plan import Plan

#: The direction transformation's step counter (``SketchplanState.count``), replicated.
COUNT_BYTES = 4


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=4,model=2"`` → ``{"data": 4, "model": 2}`` (axis order kept)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.strip().partition("=")
        if not name or not size.strip().isdigit() or int(size) < 1 or name in out:
            raise UserError(f"mesh {text!r} is not a list of distinct axis=size pairs with sizes ≥ 1; write it "
                            "like data=4,model=2.")
        out[name.strip()] = int(size)
    return out


def device_state_bytes(plan: "Plan", mesh: Mapping[str, int], specs: Mapping[str, Spec]) -> list[int]:
    """Bytes of the plan's optimizer state on each device of ``mesh`` (row-major device order).

    ``specs``: parameter name → partition spec (a tuple of None / axis name / tuple of axis names per
    dimension); a parameter without one is replicated. Frozen entries hold nothing."""
    unknown = {a for s in specs.values() for e in s if e is not None
               for a in ((e,) if isinstance(e, str) else e)} - set(mesh)
    if unknown:
        raise UserError(f"partition specs name mesh axes {sorted(unknown)} that the mesh {dict(mesh)} lacks; "
                        "use the mesh's axis names.")
    total = [COUNT_BYTES] * math.prod(mesh.values())
    for e in plan.tensors:
        cfg = e.config()
        if cfg is None:
            continue
        shape = tuple(int(d) for d in e.shape)
        opts = plan.defaults.model_copy(update=e.options())
        spec = next((tuple(specs[n]) for n in (e.name, *e.tied) if n in specs), ())
        for i, b in enumerate(tensor_device_bytes(state_layout(shape, cfg, opts), shape, spec, mesh)):
            total[i] += b
    return total
