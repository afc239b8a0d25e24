"""What the CPU offers that changes how seqserve is best run."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def has_vnni() -> bool:
    """Whether the CPU has VNNI, the 8-bit dot products that make ONNX Runtime's INT8 kernels about
    twice as fast as fp32 (AVX-512 VNNI or AVX-VNNI; read from Linux's /proc/cpuinfo, False
    elsewhere). Without it the INT8 sentiment model's step is about as costly as fp32's
    (docs/benchmarks.md), and the serving choices that pay for a cheap model do not."""
    try:
        return vnni_in(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False


def vnni_in(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text's first CPU lists a VNNI flag (an x86 "flags" line; ARM's
    "Features" lines have none of these)."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags
