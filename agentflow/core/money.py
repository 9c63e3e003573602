"""Amounts of money as people read them: ``$0.05``, ``$1,234.57``, ``$0.00002`` (never ``$2e-05``)."""

from __future__ import annotations


def format_usd(usd: float) -> str:
    """Cents for a dollar or more (and for zero); below a dollar, every significant digit up to 10 places,
    at least two."""
    if usd == 0 or abs(usd) >= 1:
        return f"${usd:,.2f}"
    sign = "-" if usd < 0 else ""
    whole, _, decimals = f"{abs(usd):.10f}".rstrip("0").partition(".")
    return f"{sign}${whole}.{decimals.ljust(2, '0')}"
