"""What the host CPU can do, read without torch (the services' doors stay torch-free)."""
from __future__ import annotations

from pathlib import Path


def cpu_has_bf16() -> bool:
    """The CPU has native bf16 dot products: ``avx512_bf16`` or ``amx_bf16`` among /proc/cpuinfo's
    flags (Linux). False where the file cannot be read. Without them torch still runs bf16, emulated
    and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
