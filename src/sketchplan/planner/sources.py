"""Where models come from (``--model``): presets, ``module:factory``, shapes files and ``hf:config.json``.

Everything is built on the meta device: shapes and dtypes only, nothing allocated, nothing downloaded.

- Presets: transformers configurations with the published hyper-parameters (GPT-2 small/medium/large/XL,
  BERT base/large, ViT-B/16 and L/16, Llama 7B/13B/70B, ResNet-18/50). Needs the ``hf`` extra.
- ``package.module:factory``: a callable returning an ``nn.Module``, called under ``torch.device("meta")``.
- A shapes file (``.yaml``/``.yml``/``.json``): ``params:`` list of ``{name, shape, dtype?, trainable?, spec?}``;
  ``spec`` is the tensor's JAX partition spec on a mesh (``[null, model]``; read by ``plan --mesh``).
- ``hf:PATH/config.json``: a local transformers configuration file. Any error transformers raises while reading
  the configuration or building the model (negative, fractional or inconsistent sizes, a class that is not a
  model) is reported as one sentence quoting transformers' own message; a configuration that would build more
  than ``MAX_HF_MODULES`` modules is refused while it builds (a layer count of 10^9 would otherwise exhaust
  memory).

Files are read through ``inputs`` (size, depth and alias limits; NaN and infinities refused).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import UserError
from .analysis import BufferSpec, ModelSpec, ParamSpec, analyze

_LLAMA = dict(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)

#: name → (transformers config class, model class, config kwargs). Published sizes.
PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
    "gpt2-medium": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=1024, n_layer=24, n_head=16)),
    "gpt2-large": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=1280, n_layer=36, n_head=20)),
    "gpt2-xl": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=1600, n_layer=48, n_head=25)),
    "bert-base": ("BertConfig", "BertForMaskedLM", {}),
    "bert-large": ("BertConfig", "BertForMaskedLM",
                   dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)),
    "vit-b16": ("ViTConfig", "ViTForImageClassification", dict(num_labels=1000)),
    "vit-l16": ("ViTConfig", "ViTForImageClassification",
                dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                     num_labels=1000)),
    "llama-7b": ("LlamaConfig", "LlamaForCausalLM",
                 dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, **_LLAMA)),
    "llama-13b": ("LlamaConfig", "LlamaForCausalLM",
                  dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, **_LLAMA)),
    "llama-70b": ("LlamaConfig", "LlamaForCausalLM",
                  dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, **_LLAMA)),
    "mixtral-8x7b": ("MixtralConfig", "MixtralForCausalLM",
                     dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                          max_position_embeddings=32768, tie_word_embeddings=False)),
    "resnet-18": ("ResNetConfig", "ResNetForImageClassification",
                  dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic", num_labels=1000)),
    "resnet-50": ("ResNetConfig", "ResNetForImageClassification",
                  dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                       num_labels=1000)),
}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("model presets need the transformers package; install it with "
                        "`pip install 'sketchplan[hf]'`.") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _on_meta(build: Callable[[], Any]) -> Any:
    """``build()`` under ``torch.device("meta")`` (nothing allocated); without torch installed, just
    ``build()`` (a JAX factory returns shapes, not arrays)."""
    try:
        import torch
    except ImportError:
        return build()
    with torch.device("meta"):
        return build()


def build_preset(name: str):
    """The preset's ``nn.Module`` on the meta device."""
    cfg_cls, model_cls, kwargs = PRESETS[name]
    tf = _transformers()
    config = getattr(tf, cfg_cls)(**kwargs)
    return _on_meta(lambda: getattr(tf, model_cls)(config))


def hf_config_path(path: str) -> str:
    """``hf:DIR`` means ``DIR/config.json`` (a checkpoint directory, as transformers' ``from_pretrained`` takes
    it); ``hf:FILE`` is the file itself."""
    return os.path.join(path, "config.json") if path and os.path.isdir(path) else path


def _unknown_model_type(model_type: str, known) -> str:
    """One sentence for a ``model_type`` transformers does not know: the closest known names, not all of them."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(model_type.lower(), known, n=5, cutoff=0.75)
    hint = (f"did you mean {', '.join(close)}?" if close
            else f"known ones include {', '.join(k for k in ('bert', 'gpt2', 'llama', 'mistral', 'mixtral', 't5', 'vit') if k in known)}")
    return f"model_type {model_type[:60]!r} is not one of the {len(known)} model types this transformers knows ({hint})"


def build_hf_config(path: str):
    """An ``nn.Module`` from a local transformers ``config.json`` (architecture from its ``architectures``)."""
    from ..inputs import load_json, read_text

    path = hf_config_path(path)
    where = f"configuration file {path!r}"
    text = read_text(path, "configuration file", "give hf:DIR (holding config.json) or hf:PATH/config.json of a "
                     "local file", "fix the file")
    data = load_json(text, where, "fix the file")
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise UserError(f"{where} has no 'model_type'; use a transformers config.json.")
    tf = _transformers()
    known = getattr(tf, "CONFIG_MAPPING", None)
    if known is not None and data["model_type"] not in known:
        raise UserError(f"{where}: {_unknown_model_type(data['model_type'], known.keys())}; fix 'model_type'.")
    try:
        config = tf.AutoConfig.for_model(**data)
    except Exception as exc:  # transformers validates in many ways (ValueError, TypeError, KeyError, ...)
        raise UserError(f"transformers cannot read {where} ({type(exc).__name__}: {_first_line(exc)}); fix the "
                        "configuration.") from None
    archs = data.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise UserError(f"{where}: 'architectures' must be a list of class names such as [\"LlamaForCausalLM\"].")
    model_cls = None
    if archs:
        import torch.nn as nn

        model_cls = getattr(tf, archs[0], None)
        if not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
            raise UserError(f"{where}: architecture {archs[0]!r} is not a transformers model class; name one such as "
                            "LlamaForCausalLM, or remove 'architectures' to build the base model.")
    build = (lambda: tf.AutoModel.from_config(config)) if model_cls is None else (lambda: model_cls(config))
    try:
        with _module_limit():
            return _on_meta(build)
    except _TooManyModules:
        raise UserError(f"{where} builds more than {MAX_HF_MODULES:,} modules; check its layer and expert counts "
                        "(or describe the model with a shapes file).") from None
    except Exception as exc:
        raise UserError(f"transformers cannot build a model from {where} ({type(exc).__name__}: "
                        f"{_first_line(exc)}); fix the configuration.") from None


#: modules an ``hf:`` configuration may build: each costs 5-8 KB on the meta device (16,000 about 130 MB); the
#: largest of transformers' 680 default configurations that build, nllb-moe, has 4,296
MAX_HF_MODULES = 16_000


class _TooManyModules(Exception):
    pass


class _module_limit:
    """Count ``nn.Module`` constructions while building; past ``MAX_HF_MODULES`` raise ``_TooManyModules``."""

    def __enter__(self):
        import torch.nn as nn

        self._orig = nn.Module.__init__
        count = [0]
        orig = self._orig

        def counting_init(module, *args, **kwargs):
            count[0] += 1
            if count[0] > MAX_HF_MODULES:
                raise _TooManyModules()
            orig(module, *args, **kwargs)

        nn.Module.__init__ = counting_init
        return self

    def __exit__(self, *exc):
        import torch.nn as nn

        nn.Module.__init__ = self._orig
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def source_files(spec: str) -> list[tuple[str, str]]:
    """The files a ``--model`` (or ``--data``/``--loss``) source reads, as (what, path): a shapes file, a
    configuration, or the Python file of ``package.module``; outputs must never overwrite them. Never raises."""
    if not spec or spec in PRESETS:
        return []
    if spec.startswith("hf:"):
        return [("--model configuration", hf_config_path(spec[3:]))]
    if spec.lower().endswith((".yaml", ".yml", ".json")):
        return [("--model shapes file", spec)]
    mod_name = spec.partition(":")[0]
    if not mod_name:
        return []
    try:
        import importlib.util

        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        found = importlib.util.find_spec(mod_name)
    except Exception:
        return []
    origin = getattr(found, "origin", None)
    return [(f"module {mod_name!r}", origin)] if origin and os.path.isfile(origin) else []


def load_shapes_file(path: str) -> ModelSpec:
    """A framework-neutral shapes file: ``params: [{name, shape, dtype?, trainable?}, ...]``."""
    from ..inputs import load_json, load_yaml, read_text

    p = Path(path)
    text = read_text(p, "shapes file", "check the path", "fix the file")
    where = f"shapes file {path!r}"
    data = load_json(text, where, "fix its syntax") if p.suffix.lower() == ".json" else \
        load_yaml(text, where, "fix its syntax")
    if not isinstance(data, dict) or not isinstance(data.get("params"), list) or not data["params"]:
        raise UserError(f"shapes file {path!r} needs a top-level 'params:' list of {{name, shape}} entries.")
    params, seen = [], set()
    for i, e in enumerate(data["params"]):
        where = f"shapes file {path!r}, entry {i}"
        if not isinstance(e, dict) or "name" not in e or "shape" not in e:
            raise UserError(f"{where} needs 'name' and 'shape'.")
        unknown = set(e) - {"name", "shape", "dtype", "trainable", "spec"}
        if unknown:
            raise UserError(f"{where} has unknown field {sorted(unknown)[0]!r}; allowed: name, shape, dtype, trainable, "
                            "spec.")
        shape = e["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise UserError(f"{where} ({str(e['name'])[:80]!r}): 'shape' must be a list of non-negative integers.")
        if not isinstance(e["name"], (str, int)) or isinstance(e["name"], bool):
            raise UserError(f"{where}: 'name' must be a string.")
        if len(shape) > 64:
            raise UserError(f"{where} ({str(e['name'])[:80]!r}): 'shape' has {len(shape)} dimensions; at most 64.")
        dtype = e.get("dtype", "float32")
        from ..methods.layout import DTYPE_BYTES

        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise UserError(f"{where} ({str(e['name'])[:80]!r}): unknown dtype {str(dtype)[:40]!r}; use e.g. float32 "
                            "or bfloat16.")
        trainable = e.get("trainable", True)
        if not isinstance(trainable, bool):
            raise UserError(f"{where} ({str(e['name'])[:80]!r}): 'trainable' must be true or false.")
        name = str(e["name"])
        spec = None
        if e.get("spec") is not None:
            from .mesh import as_spec

            if not isinstance(e["spec"], list) or len(e["spec"]) > 64:
                raise UserError(f"{where} ({name[:80]!r}): 'spec' must be a list with one entry per dimension, e.g. "
                                "[null, model].")
            spec = as_spec(e["spec"], f"{where} ({name[:80]!r})")
        if name in seen:
            raise UserError(f"{where}: name {name!r} appears twice; names must be unique.")
        seen.add(name)
        params.append(ParamSpec(name=name, shape=tuple(shape), dtype=dtype, trainable=trainable,
                                module=name.rsplit(".", 1)[0] if "." in name else "", spec=spec))
    return ModelSpec(params=params, source=str(path))


def import_callable(spec: str, what: str) -> Callable:
    """``package.module:name`` → the callable it names (user errors for anything that goes wrong)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise UserError(f"{what} {spec!r} is not of the form package.module:name.")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # any import failure is the user's module
        raise UserError(f"cannot import module {mod_name!r} for {what} {spec!r} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the module path and PYTHONPATH.") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UserError(f"module {mod_name!r} has no callable {attr!r}; name a function.")
    return fn


def build_factory(spec: str, meta: bool = True):
    """Import ``package.module:factory`` and call it on the meta device.

    It must return an ``nn.Module`` or a JAX pytree of arrays / ``jax.ShapeDtypeStruct`` (for a Flax module,
    ``jax.eval_shape(model.init, key, x)``: nothing is allocated); pytree names are key paths.
    """
    factory = import_callable(spec, "--model")
    try:
        model = _on_meta(factory) if meta else factory()
    except Exception as exc:
        raise UserError(f"factory {spec!r} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        "make it build the model from configuration without loading weights.") from None
    from .analysis import is_pytree_of_arrays, is_torch_module

    if not is_torch_module(model) and not is_pytree_of_arrays(model):
        raise UserError(f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module or a JAX "
                        "pytree of arrays.")
    return model


def _cache_path(name: str) -> Path | None:
    """Where a preset's analysed spec is cached: keyed by preset, its settings and the transformers version."""
    if os.environ.get("SKETCHPLAN_NO_CACHE"):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf_version = version("transformers")
    except PackageNotFoundError:
        return None
    import hashlib

    key = hashlib.sha256(json.dumps([name, PRESETS[name], tf_version], sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("SKETCHPLAN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                           Path.home() / ".cache") / "sketchplan")
    return root / "presets" / f"{name}-{key}.json"


def preset_spec(name: str) -> ModelSpec:
    """The preset's ``ModelSpec``; cached on disk after the first build (importing transformers costs seconds).

    Set ``SKETCHPLAN_NO_CACHE=1`` to always rebuild, ``SKETCHPLAN_CACHE=DIR`` to move the cache.
    """
    path = _cache_path(name)
    if path is not None and path.is_file():
        try:
            return spec_from_dict(json.loads(path.read_text()), source=name)
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt cache entry is rebuilt below
    spec = analyze(build_preset(name), source=name)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from ..files import write_atomic

            write_atomic(path, json.dumps(spec_to_dict(spec)))
        except (OSError, UserError):
            pass  # caching is an optimisation only
    return spec


def spec_to_dict(spec: ModelSpec) -> dict:
    return {"params": [dict(name=p.name, shape=list(p.shape), dtype=p.dtype, trainable=p.trainable,
                            module=p.module, tied=list(p.tied)) for p in spec.params],
            "buffers": [dict(name=b.name, shape=list(b.shape), dtype=b.dtype) for b in spec.buffers]}


def spec_from_dict(data: dict, source: str = "") -> ModelSpec:
    params = [ParamSpec(name=p["name"], shape=tuple(p["shape"]), dtype=p["dtype"], trainable=p["trainable"],
                        module=p["module"], tied=tuple(p["tied"])) for p in data["params"]]
    buffers = [BufferSpec(b["name"], tuple(b["shape"]), b["dtype"]) for b in data["buffers"]]
    return ModelSpec(params=params, buffers=buffers, source=source)


def load_model(spec: str, module: bool = False):
    """The model named by ``--model``: an ``nn.Module`` on the meta device, or a ``ModelSpec``.

    Presets come back as their cached ``ModelSpec`` unless ``module`` asks for the ``nn.Module`` itself
    (needed to instantiate an optimizer for it).
    """
    if spec in PRESETS:
        return build_preset(spec) if module else preset_spec(spec)
    if spec.startswith("hf:"):
        return build_hf_config(spec[3:])
    if spec.lower().endswith((".yaml", ".yml", ".json")):
        return load_shapes_file(spec)
    if ":" in spec:
        return build_factory(spec)
    raise UserError(f"unknown model {spec!r}; use a preset ({', '.join(PRESETS)}), package.module:factory, "
                    "a shapes file (.yaml/.json) or hf:DIR / hf:PATH/config.json.")


def load_spec(spec: str) -> ModelSpec:
    """``load_model`` followed by ``analyze``, with the source recorded."""
    return analyze(load_model(spec), source=spec)
