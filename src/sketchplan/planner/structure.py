"""Structure of parameter tensors that the shape alone does not tell: stacked experts and fused projections.

- **Stacked experts** (transformers' fused MoE experts, e.g. Mixtral ``mlp.experts.gate_up_proj`` of shape
  E × 2I × H): a batch of E independent matrices. Recognised from the module (the owning module's
  ``num_experts`` equals the leading dimension) or, without a module (shapes files, JAX pytrees), from the name
  (a path component containing ``expert`` on a tensor of order ≥ 3). ``batch_dims = 1``: no Kronecker factor
  across the expert axis, each expert blocked on its own (``methods.blocking`` rule 3).
- **Fused projections**: ``gate_up_proj`` holds gate and up concatenated along one axis (``chunk(2)`` in the
  forward); the axis is the one of size 2·I when the module names I (``intermediate_dim``, ``intermediate_size``,
  ``ffn_dim``), else the larger matrix axis when it is even. A ``qkv_proj`` whose module (or its ``config``) gives
  the head counts and head size is split into q | k | v. Each segment is blocked on its own.
- Conv kernels and everything else: no structure (the documented merge rule applies).
"""

from __future__ import annotations

from dataclasses import replace

EXPERT_WORD = "expert"
GATE_UP_NAMES = ("gate_up_proj", "w13", "gate_up")
QKV_NAMES = ("qkv_proj", "Wqkv", "query_key_value")


def _attr(module, *names):
    """The first of ``names`` the module (or its ``config``) has as a positive int."""
    for obj in (module, getattr(module, "config", None)):
        for n in names:
            v = getattr(obj, n, None) if obj is not None else None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def detect(name: str, shape: tuple[int, ...], owner=None) -> dict:
    """Structure fields for one parameter: ``batch_dims``, ``splits``, ``split_axis`` (empty dict: none)."""
    out: dict = {}
    parts = name.split(".") if "." in name else name.split("/")
    leaf = parts[-1] if parts[-1] not in ("weight", "bias") else (parts[-2] if len(parts) > 1 else parts[-1])
    n_exp = _attr(owner, "num_experts", "num_local_experts") if owner is not None else None
    if len(shape) >= 3 and ((n_exp is not None and shape[0] == n_exp)
                            or (owner is None and any(EXPERT_WORD in p.lower() for p in parts[:-1] + [leaf]))):
        out["batch_dims"] = 1
    b = out.get("batch_dims", 0)
    mat = shape[b:]
    if len(mat) != 2:
        return out
    if any(leaf == g or leaf.endswith(g) for g in GATE_UP_NAMES):
        inter = _attr(owner, "intermediate_dim", "intermediate_size", "ffn_dim", "moe_intermediate_size") \
            if owner is not None else None
        axes = [a for a, d in enumerate(mat) if inter is not None and d == 2 * inter]
        if not axes and inter is None:
            big = max(range(2), key=lambda a: mat[a])
            axes = [big] if mat[big] % 2 == 0 and mat[big] != mat[1 - big] else []
        if axes:
            out["splits"] = (mat[axes[0]] // 2, mat[axes[0]] // 2)
            out["split_axis"] = axes[0]
    elif any(leaf == q for q in QKV_NAMES) and owner is not None:
        heads = _attr(owner, "num_heads", "num_attention_heads")
        kv = _attr(owner, "num_key_value_heads", "num_kv_heads") or heads
        hd = _attr(owner, "head_dim")
        if heads and kv and hd:
            sizes = (heads * hd, kv * hd, kv * hd)
            axes = [a for a, d in enumerate(mat) if d == sum(sizes)]
            if axes:
                out["splits"] = sizes
                out["split_axis"] = axes[0]
    return out


def annotate(params: list, model=None) -> list:
    """``ParamSpec``s with their structure fields set (``model``: the ``nn.Module`` they come from, optional)."""
    out = []
    for p in params:
        if p.batch_dims or p.splits:
            out.append(p)
            continue
        owner = None
        if model is not None and p.module:
            try:
                owner = model.get_submodule(p.module)
            except (AttributeError, ValueError):
                owner = None
        fields = detect(p.name, tuple(p.shape), owner)
        out.append(replace(p, **fields) if fields else p)
    return out


def structured(cfg, p):
    """The candidate ``cfg`` specialised to ``p``'s structure, or None when the method would couple experts
    (extreme tensoring's per-mode vectors, an Adafactor graft's row/column sums span the expert axis)."""
    if cfg.method == "muon":  # issue 19 part A
        return muon_structured(cfg, p)
    if not (p.batch_dims or p.splits):
        return cfg
    from ..methods import METHOD_MODULES

    if p.batch_dims and cfg.method == "extreme_tensoring":
        return None
    if not METHOD_MODULES[cfg.method].MATRIX:
        return cfg
    if p.batch_dims and cfg.graft == "adafactor":
        return None
    return cfg.model_copy(update={"batch_dims": p.batch_dims, "splits": p.splits, "split_axis": p.split_axis})


#: Name parts of the tensors Muon's authors train with AdamW: embeddings and output heads (Jordan et al. 2024).
MUON_EXCLUDED = ("embed", "wte", "wpe", "lm_head", "shared", "classifier", "head.", "position", "token_type")


def muon_structured(cfg, p):
    """Muon on ``p``: None for an embedding or an output head (by name, or tied to another tensor, as a tied
    embedding/head is), which keep AdamW (offered as the adam candidate); stacked experts orthogonalised one
    matrix each (``batch_dims``)."""
    names = (p.name,) + tuple(p.tied)
    if p.tied or any(part in n.lower() for n in names for part in MUON_EXCLUDED):
        return None
    return cfg.model_copy(update={"batch_dims": p.batch_dims}) if p.batch_dims else cfg
