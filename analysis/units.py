"""Human units for durations and sizes (the JSON keeps raw integers)."""

from __future__ import annotations


def format_ns(value: float) -> str:
    value = float(value)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}" if abs(value) / scale < 1000 else f"{value / scale:,.0f} {unit}"
    return f"{value:.0f} ns"


def format_bytes(value: float) -> str:
    value = float(value)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:.0f} B"


def format_share(value: float) -> str:
    return f"{value * 100:.1f}%" if value >= 0.001 else f"{value * 100:.2f}%"
