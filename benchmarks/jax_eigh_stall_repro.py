"""The ``block_until_ready`` stall of issue 22 (blocked Shampoo, 4 CPU devices, 0% CPU): a thread-pool
starvation deadlock in jaxlib's CPU eigh, not in sketchplan.

    python benchmarks/jax_eigh_stall_repro.py [--flag]   (exit 0: finished; 3: stalled, stacks dumped)

A gdb backtrace of the stalled benchmarks/jax_mesh.py (jax 0.10.2) showed every ``tf_XLAEigen`` worker — one
per emulated device, each executing its shard of the jitted step — inside ``lapack_ssyevd_ffi`` →
``jax::EigenvalueDecompositionSymmetric::Kernel`` → ``jax::ParallelBatchMap``, waiting on a
``BlockingCounter`` for batch items it had queued on the same intra-op pool, which no free thread can run;
the Python thread waits in ``CpuPjRtRawLoadedExecutable::Execute``/``BlockUntilReady``. A batched eigh (blocked
Shampoo stacks its blocks, (count, B, B)) run by as many devices as the pool has threads can deadlock this way;
one block (unblocked Shampoo) or one device does not batch in parallel. ``--flag`` sets
``--xla_cpu_multi_thread_eigen=false``, which the tests and benchmarks/jax_mesh.py use to avoid it.
This script runs a batched eigh inside ``lax.cond`` on 4 devices many times under a 120 s watchdog.
"""

from __future__ import annotations

import faulthandler
import os
import sys

flags = " --xla_force_host_platform_device_count=4"
if "--flag" in sys.argv:
    flags += " --xla_cpu_multi_thread_eigen=false"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + flags

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

faulthandler.dump_traceback_later(120, exit=True)  # exit code 1 with the stacks when stalled
mesh = jax.make_mesh((4,), ("d",), axis_types=(AxisType.Auto,))
x = jax.random.normal(jax.random.key(0), (4 * 16, 64, 64))
x = jax.device_put(x @ jnp.swapaxes(x, 1, 2), NamedSharding(mesh, P("d")))


@jax.jit
def step(x, t):
    return jax.lax.cond(t % 2 == 0, lambda x: jnp.linalg.eigh(x)[1], lambda x: x, x)


for t in range(400):
    out = step(x, t)
    out.block_until_ready()
print("finished 400 steps", flags)
