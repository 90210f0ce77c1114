"""Distributed checkpoints of a model and its sketchplan optimizer with ``torch.distributed.checkpoint`` (DCP).

``save(optimizer, model, path)`` / ``load(optimizer, model, path)`` write and read one DCP checkpoint holding
``{"model": ..., "optim": ...}``. The model part is ``get_model_state_dict`` / ``set_model_state_dict``
(``torch.distributed.checkpoint.state_dict``: DDP and FSDP2 aware). The optimizer part follows
``get_optimizer_state_dict``'s conventions: ``{"state": {FQN: {key: tensor}}, "param_groups": [...]}`` with
parameters named by their fully qualified names, and:

- state shaped like the parameter's local shard under FSDP2 (Adam's moments, graft second moments, momentum) is
  saved as a ``DTensor`` with the parameter's mesh and placements, so DCP can reshard it to another world size;
- state that only one rank holds (its preconditioner blocks, its local sketch) is saved under a key naming the
  rank (``blocks0.stat0@rank1``): it can be resumed only on the same world size with the same plan;
- the step counters are saved as 0-d tensors (equal on every rank holding them), the non-finite skip counters
  once (one rank's count).

Resuming at the same world size is bit-exact (tests/test_distributed.py). Loading a checkpoint with per-rank state
on a different world size is refused with one sentence. Works on a single process too (no process group).
"""

from __future__ import annotations

from .errors import UserError, require


def _fqn_params(model) -> dict[int, str]:
    from .build import _unwrap

    inner = _unwrap(model)
    return {id(p): n for n, p in inner.named_parameters()}


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _optim_state(opt, model, allocate: bool) -> dict:
    """The optimizer's DCP state dict (see module docstring); ``allocate`` first creates every state tensor this
    rank would hold (zeros), so that DCP can load into it in place."""
    import torch

    from .optimizers.torch import group_config
    from .optimizers.torch.distributed import local_tensor

    rank, world = _world()
    names = _fqn_params(model)
    if allocate:
        if not hasattr(opt, "allocate_state"):
            raise UserError("the optimizer is not a sketchplan optimizer; build it with sketchplan.build_optimizer.")
        opt.allocate_state()
    state: dict[str, dict] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            s = opt.state.get(p)
            if not s:
                continue
            name = names[id(p)]
            out = {"step": torch.tensor(s["step"], dtype=torch.int64)}
            local = local_tensor(p)
            for key, v in s.items():
                if not torch.is_tensor(v):
                    continue
                if hasattr(p, "_local_tensor") and not key.startswith("blocks") and v.dim() \
                        and tuple(v.shape) == tuple(local.shape):
                    from torch.distributed.tensor import DTensor

                    out[key] = DTensor.from_local(v, p.device_mesh, p.placements, run_check=False,
                                                  shape=p.shape, stride=p.stride())
                elif key == "nonfinite_skips":
                    out[key] = v  # a counter: saved once (DCP keeps one copy of a plain tensor), loaded on every rank
                else:
                    out[f"{key}@rank{rank}"] = v
            state[name] = out
    groups = []
    for group in opt.param_groups:
        cfg, opts = group_config(group)
        groups.append({"params": [names[id(p)] for p in group["params"]], "method": cfg.label()})
    return {"state": state, "param_groups": groups, "world_size": world}


def save(optimizer, model, path: str) -> None:
    """Save ``model`` and ``optimizer`` (built by ``sketchplan.build_optimizer``) as one DCP checkpoint at ``path``
    (a directory), collectively on every rank of the process group."""
    require("torch", "sketchplan.checkpoint")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = {"model": get_model_state_dict(model), "optim": _optim_state(optimizer, model, allocate=False)}
    dcp.save(sd, checkpoint_id=path)


def load(optimizer, model, path: str) -> None:
    """Load a checkpoint written by ``save`` into ``model`` and ``optimizer`` in place (collectively)."""
    require("torch", "sketchplan.checkpoint")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from .optimizers.torch.distributed import local_tensor

    meta = dcp.FileSystemReader(path).read_metadata()
    saved_world = None
    ranked = any("@rank" in k for k in meta.state_dict_metadata)
    _, world = _world()
    optim = _optim_state(optimizer, model, allocate=True)
    probe = {"optim": {"world_size": 0}}
    dcp.load(probe, checkpoint_id=path)
    saved_world = probe["optim"]["world_size"]
    if ranked and saved_world != world:
        raise UserError(f"checkpoint {path!r} holds per-rank preconditioner state of {saved_world} ranks; resume it "
                        f"on {saved_world} ranks (this run has {world}) with the same plan.")
    msd = get_model_state_dict(model)
    sd = {"model": msd, "optim": optim}
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(model, msd)
    names = _fqn_params(model)
    for group in optimizer.param_groups:
        for p in group["params"]:
            s = optimizer.state.get(p)
            if s and names[id(p)] in optim["state"]:
                entry = optim["state"][names[id(p)]]
                s["step"] = int(entry["step"])
                for key, v in entry.items():
                    base = key.split("@rank")[0]
                    if key != "step" and hasattr(v, "_local_tensor") and base in s:
                        if s[base].data_ptr() != local_tensor(v).data_ptr():
                            s[base].copy_(local_tensor(v))
