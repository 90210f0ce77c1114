"""Activations from a trace, not a guess: one forward and backward under fake tensors.

``trace_activations(model, example_inputs)`` materialises the model's parameters as ``FakeTensor``s (shapes and
dtypes only: nothing is allocated), runs one forward and ``loss.backward()`` on the example inputs under torch's
``MemTracker`` (``torch.distributed._tools.mem_tracker``, which counts every tensor an operator creates and frees)
and records the high-water mark above parameters and buffers: activations, the gradients as backward creates
them and the kernels' temporaries. The loss is the model's own when it returns one (transformers models given
``labels``), else the sum of its first output; the outputs stay alive through the backward, as in
``out = model(**batch); out.loss.backward()`` (a loop that drops them first peaks lower by the logits). When the model supports activation checkpointing
(transformers' ``gradient_checkpointing_enable``) it is traced both ways.

Presets get a default batch from ``--batch-size`` and ``--seq-len`` (token ids and labels for language models,
an image batch and class labels for vision models). Shapes files and JAX models have no forward to trace: they
keep ``--reserve``.

``DEFAULT_HEADROOM``: PyTorch's caching allocator rounds every block up to a multiple of 512 bytes, serves
requests up to 1 MiB from 2 MiB segments and larger ones from 20 MiB segments (or their own, rounded to 2 MiB,
above 10 MiB), and reuses a cached block only for a request that fits it, so the memory it reserves exceeds the
tensors' high-water mark by the stranded tails of segments; 10% of the budget is kept free for that by default
(``--headroom``; ``torch.cuda.memory_reserved`` against ``max_memory_allocated`` shows the real figure).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

from ..errors import UserError
from .plan import ActivationInfo
from .sizes import fmt_bytes

#: Fraction of the memory budget left free for the allocator's fragmentation when activations are traced.
DEFAULT_HEADROOM = 0.10


def _fake_model(model, mode):
    """A copy of ``model``'s structure whose parameters and buffers are fake CPU tensors (ties kept)."""
    import copy

    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    import torch

    fake = copy.deepcopy(model)
    with mode:
        fake = fake._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
    for group in names.values():
        if len(group) > 1:
            canonical = fake.get_parameter(group[0])
            for alias in group[1:]:
                owner, _, leaf = alias.rpartition(".")
                setattr(fake.get_submodule(owner) if owner else fake, leaf, canonical)
    return fake


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _loss(out):
    import torch

    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is None:
        first = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) else
                                                            next(iter(out.values())))
        loss = first.float().sum()
    return loss


def _describe(inputs) -> str:
    import torch

    items = inputs.items() if isinstance(inputs, dict) else enumerate(
        inputs if isinstance(inputs, (tuple, list)) else [inputs])
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in items
                     if isinstance(v, torch.Tensor))


def _live_bytes_mode():
    """A dispatch mode counting the bytes of live tensor storages (``MemTracker``'s accounting without its
    per-module snapshots, which cost O(modules) per operator): every storage an operator returns is counted
    once, until it is freed."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: dict[int, weakref.ref] = {}
            self.now = 0
            self.peak = 0

        def track(self, t) -> None:
            st = t.untyped_storage()
            key = id(st)
            ref = self.seen.get(key)
            if ref is not None and ref() is st:
                return
            nbytes = st.nbytes()
            self.now += nbytes
            self.peak = max(self.peak, self.now)

            def gone(_, key=key, nbytes=nbytes):
                self.now -= nbytes
                self.seen.pop(key, None)

            self.seen[key] = weakref.ref(st, gone)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.track(t)
            return out

    import torch

    return LiveBytes()


@contextmanager
def _grouped_mm_as_fallback():
    """Route transformers' grouped expert matmuls (``experts_implementation="grouped_mm"``, its default for MoE
    models) through its own fallback op while tracing.

    ``torch.nn.functional.grouped_mm``'s meta kernel checks the CUDA kernel's restriction (bfloat16 only), which
    the CPU kernel and the fallback do not have, so a float32 MoE model could not be traced. The fallback
    (``transformers::grouped_mm_fallback``) has a registered fake implementation returning the same (S, out)
    tensor, so the traced bytes are those of the native kernel (tiny Mixtral: within 32 bytes of MemTracker's
    measurement of a real forward and backward). Only when transformers' MoE module is already loaded (a model
    that does not use transformers never imports it here)."""
    import sys

    moe = sys.modules.get("transformers.integrations.moe")
    original = getattr(moe, "_can_use_grouped_mm", None) if moe is not None else None
    if original is None:
        yield
        return
    moe._can_use_grouped_mm = lambda *args, **kwargs: False
    try:
        yield
    finally:
        moe._can_use_grouped_mm = original


def _trace_once(model, example_inputs: Callable[[], Any]) -> tuple[int, int, str, int]:
    with _grouped_mm_as_fallback():
        return _trace_fake(model, example_inputs)


def _trace_fake(model, example_inputs: Callable[[], Any]) -> tuple[int, int, str, int]:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake = _fake_model(model, mode)
    fake.train()
    with mode:
        inputs = example_inputs()
        for p in fake.parameters():
            p.grad = None
        tracker = _live_bytes_mode()
        for t in [*fake.parameters(), *fake.buffers()]:
            tracker.track(t)
        kept = tracker.now
        with tracker:
            out = _call(fake, inputs)
            fwd = tracker.now
            _loss(out).backward()
        peak = tracker.peak
        grads = sum(p.grad.numel() * p.grad.element_size() for p in fake.parameters() if p.grad is not None)
        retained = tracker.now - kept - grads
        inputs_bytes = 0
        for t in (inputs.values() if isinstance(inputs, dict) else
                  (inputs if isinstance(inputs, (tuple, list)) else [inputs])):
            if isinstance(t, torch.Tensor):
                inputs_bytes += t.numel() * t.element_size()
        desc = _describe(inputs)
    # the inputs live outside the tracker (created before it); count them: the batch is in memory too
    return peak - kept + inputs_bytes, fwd - kept + inputs_bytes, desc, retained + inputs_bytes


def trace_activations(model, example_inputs: Callable[[], Any]) -> ActivationInfo:
    """Trace one forward and backward of ``model`` (an ``nn.Module``, meta device fine) on
    ``example_inputs()`` (called under the fake mode: build the batch with ``torch`` factories) and return
    the activation figure (module docstring). ``UserError`` when the forward cannot be traced."""
    from .analysis import is_torch_module

    if not is_torch_module(model):
        raise UserError("activations can only be traced for a torch model; for shapes files and JAX models give "
                        "--reserve SIZE for activations instead of --batch-size.")
    if not callable(example_inputs):
        raise UserError("example inputs must be a callable returning the batch (a dict, a tuple or a tensor); "
                        "give --inputs module:function or use --reserve.")
    try:
        peak, fwd, desc, retained = _trace_once(model, example_inputs)
        ckpt = None
        on = bool(getattr(model, "is_gradient_checkpointing", False))
        if getattr(model, "supports_gradient_checkpointing", False) and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
            try:
                ckpt = _trace_once(model, example_inputs)[0]
            finally:
                if not on:
                    model.gradient_checkpointing_disable()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a user's forward under fake tensors
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        moe = ""
        if getattr(getattr(model, "config", None), "_experts_implementation", None) == "eager":
            moe = (" build it with experts_implementation=\"grouped_mm\" (transformers' default: its expert "
                   "routing has shapes fixed by the batch) or")
        raise UserError(f"the model's forward and backward cannot be traced with fake tensors "
                        f"({type(exc).__name__}: {first});{moe} give --reserve SIZE for activations "
                        f"instead.") from None
    if on and ckpt is not None:
        peak, ckpt = ckpt, ckpt
    return ActivationInfo(source="fake-tensor trace", peak_bytes=max(0, peak), forward_bytes=max(0, fwd),
                          checkpointed_peak_bytes=ckpt, checkpointing=on, inputs=desc,
                          retained_bytes=max(0, retained))


def preset_inputs(model, batch_size: int, seq_len: int | None = None) -> Callable[[], Any]:
    """A default batch for a transformers model: token ids and labels (language models, ``seq_len`` tokens;
    encoder-decoders get ``seq_len`` on both sides), or images at the configured size and class labels."""
    import torch

    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1.")
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UserError("--batch-size needs example inputs for this model: give --inputs module:function (a "
                        "callable returning the batch) or use --reserve SIZE.")
    if hasattr(cfg, "num_channels") and hasattr(cfg, "image_size") or getattr(cfg, "model_type", "") == "resnet":
        size = getattr(cfg, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        labels = getattr(cfg, "num_labels", 2)
        return lambda: {"pixel_values": torch.randn(batch_size, cfg.num_channels, size, size),
                        "labels": torch.randint(0, labels, (batch_size,))}
    if seq_len is None or seq_len < 1:
        raise UserError("--batch-size for a language model needs --seq-len T (tokens per sequence).")
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"--seq-len {seq_len} is above the model's {limit} positions; lower it.")
    vocab = cfg.vocab_size
    if getattr(cfg, "is_encoder_decoder", False):
        return lambda: {"input_ids": torch.randint(0, vocab, (batch_size, seq_len)),
                        "decoder_input_ids": torch.randint(0, vocab, (batch_size, seq_len)),
                        "labels": torch.randint(0, vocab, (batch_size, seq_len))}
    return lambda: {"input_ids": torch.randint(0, vocab, (batch_size, seq_len)),
                    "labels": torch.randint(0, vocab, (batch_size, seq_len))}


def trace_source(source: str, batch_size: int, seq_len: int | None = None, inputs: str | None = None
                 ) -> ActivationInfo:
    """``--batch-size``: trace the model named by ``--model`` on ``--inputs`` (``module:function`` called with
    the batch size and sequence length) or, for transformers models, on ``preset_inputs``."""
    from .sources import import_callable, load_model

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.")
    model = load_model(source, module=True)
    from .analysis import is_torch_module

    if not is_torch_module(model):
        raise UserError(f"model {source!r} has no torch forward to trace (a shapes file or a JAX model); give "
                        "--reserve SIZE for activations instead of --batch-size.")
    if inputs is not None:
        fn = import_callable(inputs, "--inputs")
        return trace_activations(model, lambda: fn(batch_size, seq_len))
    if getattr(model, "config", None) is None:
        raise UserError(f"--batch-size needs example inputs for {source!r}: give --inputs module:function "
                        "(called with the batch size and sequence length) or use --reserve SIZE.")
    return trace_activations(model, preset_inputs(model, batch_size, seq_len))


def too_big(info: ActivationInfo | None, kept: int, budget: int, headroom: float) -> str:
    """The message when parameters, gradients and the traced activations alone exceed the budget."""
    return (f"parameters, gradients and the traced activations alone need {fmt_bytes(kept)}, above the memory budget "
            f"{fmt_bytes(budget)} less {headroom:.0%} headroom with any optimizer; lower --batch-size or --seq-len, "
            f"or raise --memory-budget.")
