"""Device fingerprint: which device a profile is measured on, or a plan is made for.

NVIDIA GPUs are described by NVML (``pynvml`` from nvidia-ml-py, imported lazily: name, memory, driver,
compute capability), falling back to ``torch.cuda`` properties; TPUs and other JAX devices by
``jax.devices()``; CPUs by the model name in /proc/cpuinfo (or ``platform.processor()``) and the number of
threads the framework uses.

``host_info`` is what ``--hardware auto`` matches. On a CPU-only host it is read without importing torch or jax
(the planner never imports a framework): the framework is the one already imported, else the installed one
(torch first), its version comes from the package metadata, and the thread count is torch's
(``torch.get_num_threads()``) when torch is imported, else ``OMP_NUM_THREADS`` or the CPUs this process may run
on — which is what torch and XLA use by default. With a GPU visible, the framework is asked (its SM count is part
of the fingerprint).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import sys

from ..errors import UserError
from .schema import DeviceInfo


def parse_device(device: str) -> tuple[str, int]:
    """``cpu`` | ``cuda`` | ``cuda:i`` | ``tpu`` → (kind, index)."""
    m = re.fullmatch(r"(cpu|cuda|tpu)(?::(\d+))?", device.strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2)):
        raise UserError(f"device {device!r} is not one of cpu, cuda, cuda:INDEX or tpu; pass e.g. --device cuda:0.")
    return m.group(1), int(m.group(2) or 0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _framework_version(framework: str) -> str:
    if framework == "jax":
        import jax

        return jax.__version__
    import torch

    return torch.__version__.split("+")[0]


def _cpu_threads(framework: str) -> int:
    if framework == "torch":
        import torch

        return torch.get_num_threads()
    return os.cpu_count() or 1


def _nvml(index: int) -> dict:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        out = {"name": name.decode() if isinstance(name, bytes) else name,
               "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
               "driver": str(pynvml.nvmlSystemGetDriverVersion()), "compute_capability": f"{major}.{minor}"}
        pynvml.nvmlShutdown()
        return out
    except Exception:  # pynvml.NVMLError and friends: no NVML on this machine
        return {}


def linalg_backend(kind: str, framework: str, device=None) -> str | None:
    """The library that runs eigh, SVD and QR on ``kind`` under ``framework`` (an imported one), with its version:
    torch on CPU the LAPACK it was built with (``torch.__config__``: e.g. "LAPACK mkl (Intel(R) oneAPI Math Kernel
    Library Version 2024.2)"), on CUDA its preferred linalg library (cuSOLVER or MAGMA, torch's choice by size
    when "default") and the CUDA version cuSOLVER ships with; JAX the jaxlib and, on accelerators, the platform
    version XLA reports (of ``device``, a JAX device). One line of at most 200 characters; None when it cannot
    be told."""
    text = _linalg_text(kind, framework, device)
    return None if text is None else " ".join(text.split())[:200]


def _linalg_text(kind: str, framework: str, device) -> str | None:
    try:
        if framework == "torch":
            import re

            import torch

            if kind == "cuda":
                lib = str(torch.backends.cuda.preferred_linalg_library()).rsplit(".", 1)[-1].lower()
                magma = ", MAGMA available" if torch.cuda.has_magma else ""
                return f"torch linalg {lib} (cuSOLVER of CUDA {torch.version.cuda}{magma})"
            config = torch.__config__.show()
            lapack = re.search(r"LAPACK_INFO=([\w.-]+)", config)
            mkl = re.search(r"(Intel\(R\)[^\n]*Math Kernel Library Version [^\s-]+)", config)
            name = f"LAPACK {lapack.group(1)}" if lapack else "LAPACK"
            return f"{name} ({mkl.group(1)})" if mkl and lapack and lapack.group(1) == "mkl" else name
        import jax
        import jaxlib

        out = f"XLA (jaxlib {jaxlib.__version__})"
        if kind != "cpu":
            out += f", {(device if device is not None else jax.devices()[0]).client.platform_version}"
        return out
    except Exception:  # an unusual build: the profile is still valid without it
        return None


def detect(device: str = "cpu", framework: str = "torch") -> DeviceInfo:
    """The fingerprint of ``device`` as ``framework`` sees it; a device that is not there is a user error."""
    kind, index = parse_device(device)
    if framework not in ("torch", "jax"):
        raise UserError(f"framework {framework!r} is not torch or jax.")
    version = _framework_version(framework)
    if kind == "cpu":
        return DeviceInfo(kind="cpu", name=cpu_name(), cores=_cpu_threads(framework), framework=framework,
                          framework_version=version, linalg=linalg_backend("cpu", framework))
    if kind == "cuda" and framework == "torch":
        import torch

        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} is not available (torch sees {torch.cuda.device_count()} CUDA "
                            "devices); pass --device cpu or another index.")
        props = torch.cuda.get_device_properties(index)
        info = {"name": props.name, "memory_bytes": int(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}", **_nvml(index)}
        return DeviceInfo(kind="cuda", cores=props.multi_processor_count, framework=framework,
                          framework_version=version, linalg=linalg_backend("cuda", framework), **info)
    import jax

    platform_name = "gpu" if kind == "cuda" else "tpu"
    try:
        devs = jax.devices(platform_name)
    except RuntimeError:
        devs = []
    if index >= len(devs):
        raise UserError(f"device {device!r} is not available to JAX; pass --device cpu.")
    d = devs[index]
    extra = _nvml(index) if kind == "cuda" else {}
    return DeviceInfo(kind=kind, name=extra.pop("name", getattr(d, "device_kind", str(d))), framework=framework,
                      framework_version=version, linalg=linalg_backend(kind, framework, d), **extra)


def _installed(name: str) -> bool:
    """Whether ``name`` is imported or importable, without importing it."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_framework() -> str:
    """``torch`` or ``jax``: the one already imported, else the installed one (torch first), found without
    importing either; ``torch`` when neither is installed."""
    for fw in ("torch", "jax"):
        if fw in sys.modules:
            return fw
    for fw in ("torch", "jax"):
        if _installed(fw):
            return fw
    return "torch"


def _installed_version(framework: str) -> str:
    try:
        return importlib.metadata.version(framework).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return ""


def default_threads(framework: str) -> int:
    """The CPU threads ``framework`` uses by default (see module docstring), importing nothing new."""
    if framework == "torch" and "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, checked without importing a framework."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.isdir("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus"))


def host_info() -> DeviceInfo:
    """The fingerprint ``--hardware auto`` matches (module docstring): no framework import on a CPU host."""
    framework = installed_framework()
    if gpu_visible() and _installed(framework):
        return detect(default_device() if framework == "torch" else "cuda", framework)
    if gpu_visible():
        extra = _nvml(0)
        return DeviceInfo(kind="cuda", name=extra.pop("name", "NVIDIA GPU"), framework=framework,
                          framework_version="", **extra)
    return DeviceInfo(kind="cpu", name=cpu_name(), cores=default_threads(framework), framework=framework,
                      framework_version=_installed_version(framework) if _installed(framework) else "")


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (what ``--hardware auto`` profiles against)."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def profile_name(info: DeviceInfo) -> str:
    """A file-name-safe name after the fingerprint, e.g. ``cpu-amd-epyc-2t-torch``."""
    slug = re.sub(r"[^a-z0-9]+", "-", info.name.lower()).strip("-")
    cores = f"-{info.cores}{'t' if info.kind == 'cpu' else 'sm'}" if info.cores else ""
    return f"{info.kind}-{slug}{cores}-{info.framework}"
