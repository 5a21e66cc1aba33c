"""Each decode kernel with its weights in cache, beside the memory read rate:
a proxy, on any CPU, for whether the instructions or the memory limit
decoding.

    python -m pytest benches/test_kernels.py

For every weight type the CPU kernels run and every kernel tier this CPU
runs (the tier is an argument of ``_tinyllm.kernel_bandwidth``, so one run
covers them all), one thread multiplies a matrix of half the L2 cache by one
vector, over and over: the weights stay in cache, and the GB/s of weights
that it reaches is what the kernel's instructions allow. Divided by one
thread's memory read rate (measured once per run, see ``conftest.Machine``),
it says how far the kernel is from being the limit: at 2 or more, memory
limits decoding with room to spare, on this machine and on one with memory
twice as fast (issue 15's target for every type and tier).

Each product is checked against f64 sums of the same values before it is
timed. Nothing here asserts a speed; the table at the end lists every row,
and the JSON (``--benchmark-json``) has them in ``extra_info``. (The times
pytest-benchmark prints are of whole calls, making the matrix included.)
"""

from __future__ import annotations

import pytest

from tinyllm import _tinyllm

from conftest import KERNEL_TARGET_RATIO, KERNELS, KernelRow, machine

CASES = [
    (isa, weight_type)
    for isa in _tinyllm.available_isas()
    for weight_type in _tinyllm.kernel_weight_types()
]

#: A product's largest difference from the f64 sums, over the outputs' root
#: mean square: f32 rounding of 2048-term sums stays near 1e-6; a wrong
#: kernel is off by about 1.
TOL_PRODUCT = 1e-4


@pytest.mark.parametrize(("isa", "weight_type"), CASES, ids=[f"{i}-{w}" for i, w in CASES])
def test_kernel_in_cache(benchmark, isa: str, weight_type: str) -> None:  # type: ignore[no-untyped-def]
    dram = machine().read_gb_per_s_1_thread
    r = benchmark.pedantic(
        lambda: _tinyllm.kernel_bandwidth(weight_type, isa), rounds=1, iterations=1
    )
    assert r["error"] < TOL_PRODUCT, f"{isa} {weight_type}: the product is wrong ({r})"
    ratio = r["gb_per_s"] / dram
    benchmark.extra_info.update(r)
    benchmark.extra_info.update(ratio_to_read=ratio, target_ratio=KERNEL_TARGET_RATIO)
    KERNELS.append(KernelRow(isa, weight_type, r["bytes"], r["gb_per_s"], dram))
