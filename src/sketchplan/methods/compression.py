"""Compressed optimizer state: element-wise moments stored in bfloat16 or in 8 bits with one scale per block.

Two per-tensor options of every method (``MethodConfig``):

- ``compress`` ∈ {``none``, ``bfloat16``, ``int8``}: how the *second moments* are stored: Adam's ``exp_avg_sq``
  and the adam/rmsprop graft's ``graft_exp_avg_sq`` of the matrix methods (Muon's Adam fallback too);
- ``momentum = "int8"`` (besides ``none``, ``float32``, ``bfloat16``): the first moment / momentum buffer
  (``exp_avg``, ``momentum``) in 8 bits.

8-bit blockwise quantisation (Dettmers, Lewis, Shleifer & Zettlemoyer 2022, "8-bit optimizers via block-wise
quantization", ICLR; the ``bitsandbytes`` optimizers): the flattened tensor is cut into blocks of
``BLOCK`` = 256 consecutive elements (the last block holds the remainder); per block the absolute maximum
a_b = max|x| is kept in float32 and every element as the uint8 index q of the nearest value of a 256-entry code
c (``dynamic_code``) to x / a_b, so x ≈ c[q]·a_b. The code is the *dynamic tree* code of Dettmers (2016,
"8-bit approximations for parallelism in deep learning"): signed for first moments, unsigned for second
moments (all 8 bits of magnitude), exactly ``bitsandbytes.functional.create_dynamic_map``. The code table is one
constant shared by every tensor (bitsandbytes also keeps one per optimizer), so it is not per-tensor state.

Exact bytes of one stored tensor of n elements: ``bfloat16``: 2n; ``int8``: n + 4·⌈n/256⌉
(``name`` uint8 of the parameter's shape and ``name.absmax`` float32 of ⌈n/256⌉; an empty tensor keeps
0 + 0).

How a step uses them (one mechanism for every method, ``optimizers.torch.base`` and the optax wrapper): the
stored tensors of one parameter are decoded to the state dtype, the method's own rule runs on the *plain*
configuration (``plain_config``: int8 momentum read as float32, second moments uncompressed), and the results are
encoded back. The rule's arithmetic is therefore unchanged; its transients grow by the decoded copies
(``workspace_extra``).
"""

from __future__ import annotations

from .layout import COMPRESSIONS, MethodConfig, StateTensor

#: Elements per quantisation block (bitsandbytes' blockwise 8-bit optimizers).
BLOCK = 256
#: State names ``compress`` applies to (second moments) and ``momentum="int8"`` applies to (first moments).
SECOND_MOMENTS = ("exp_avg_sq", "graft_exp_avg_sq")
FIRST_MOMENTS = ("exp_avg", "momentum")


def dynamic_code(signed: bool) -> tuple[float, ...]:
    """The 256 sorted values of the dynamic tree code (``bitsandbytes.functional.create_dynamic_map`` with
    7 exponent bits): per exponent i = 0..6 the midpoints of 2^i (signed) or 2^(i+1) (unsigned) equal steps of
    [0.1, 1], scaled by 10^(i−6), mirrored for the signed code, plus 0 and 1."""
    data: list[float] = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = [0.1 + 0.9 * j / (items - 1) for j in range(items)]
        means = [(a + b) / 2 for a, b in zip(bounds[:-1], bounds[1:])]
        data += [10.0 ** (i - 6) * m for m in means]
        if signed:
            data += [-(10.0 ** (i - 6)) * m for m in means]
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return tuple(sorted(data))


def blocks(numel: int) -> int:
    """Quantisation blocks of a tensor of ``numel`` elements."""
    return -(-numel // BLOCK)


def codec_of(name: str, cfg: MethodConfig) -> str:
    """How state tensor ``name`` is stored under ``cfg``: ``int8``, ``bfloat16`` or ``none`` (as the rule says)."""
    if name in SECOND_MOMENTS:
        return cfg.compress
    if name in FIRST_MOMENTS and cfg.momentum == "int8":
        return "int8"
    return "none"


def is_compressed(cfg: MethodConfig) -> bool:
    return cfg.compress != "none" or cfg.momentum == "int8"


def plain_config(cfg: MethodConfig) -> MethodConfig:
    """The configuration the method's rule runs on: int8 momentum as float32, second moments uncompressed."""
    if not is_compressed(cfg):
        return cfg
    return cfg.model_copy(update={"compress": "none",
                                  "momentum": "float32" if cfg.momentum == "int8" else cfg.momentum})


def stored_layout(plain: list[StateTensor], cfg: MethodConfig) -> list[StateTensor]:
    """The tensors actually allocated for a plain layout under ``cfg`` (module docstring)."""
    if not is_compressed(cfg):
        return plain
    out: list[StateTensor] = []
    for t in plain:
        codec = codec_of(t.name, cfg)
        if codec == "bfloat16":
            out.append(StateTensor(t.name, t.shape, "bfloat16"))
        elif codec == "int8":
            out.append(StateTensor(t.name, t.shape, "uint8"))
            out.append(StateTensor(t.name + ".absmax", (blocks(t.numel),), "float32"))
        else:
            out.append(t)
    return out


def coded(plain: list[StateTensor], cfg: MethodConfig) -> list[tuple[StateTensor, str]]:
    """(plain tensor, codec) of each tensor the step decodes and encodes again."""
    return [(t, c) for t in plain if (c := codec_of(t.name, cfg)) != "none"]


def decode_bytes(numel: int, codec: str, sb: int) -> tuple[int, int]:
    """(bytes the decoded copy holds, high-water mark while decoding) of one tensor in the state dtype (``sb``
    bytes): bfloat16: the cast copy; int8: the int32 indices and the gathered float32 values (scaled per block
    in place), then their cast when the state dtype is not float32."""
    if codec == "int8":
        return numel * sb, max(8 * numel, 4 * numel + numel * sb)
    return numel * sb, numel * sb


def encode_spike(numel: int, codec: str, sb: int) -> int:
    """Transient bytes of encoding one decoded tensor back (``optimizers.torch.compressed.encode``): int8: the
    per-block maxima (copied into ``absmax`` and freed), then the normalised float32 values with the maxima's
    clamped copy (freed before the search), and while the nearest code is found (``nearest_code``) the int32
    bucket keys and indices, then the indices, the gathered midpoints and the comparison's booleans, on top of
    the normalised values; bfloat16: none (``copy_``)."""
    if codec == "int8":
        return numel * 4 + max(blocks(numel) * 4, 9 * numel)
    return 0


def workspace_extra(plain: list[StateTensor], cfg: MethodConfig, sb: int) -> tuple[int, int]:
    """(bytes the decoded copies hold during the rule's step, the encode-back high-water mark above the rule's
    end state) for one parameter."""
    held, peak = 0, 0
    items = coded(plain, cfg)
    for t, c in items:
        h, during = decode_bytes(t.numel, c, sb)
        peak = max(peak, held + during)
        held += h
    enc = max([0] + [encode_spike(t.numel, c, sb) for t, c in items])
    return held, max(peak, held + enc)


def quantisation_passes(codec: str) -> int:
    """Elementwise passes of decoding and encoding one tensor (gather, scale; |x|, block max, divide,
    searchsorted ≈ 8 comparisons, cast) — for the kernel calls."""
    return {"int8": 2 + 4 + 8, "bfloat16": 2, "none": 0}[codec]


__all__ = ["BLOCK", "COMPRESSIONS", "blocks", "codec_of", "coded", "dynamic_code",
           "is_compressed", "plain_config", "stored_layout", "workspace_extra"]
