"""Exact money: every amount is stored as integer micro-dollars.

Floats cannot add up to the cent over millions of records; integers can, in SQLite and in
Redis (INCRBY) alike. The public API speaks :class:`~decimal.Decimal` dollars; anything given
as float/int/str is converted once, here, so a usage record, the ledger and the rollups hold the
same number and report totals equal the sum of ledger records exactly.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

from gateway.store.errors import InvalidInput

MICROS_PER_USD = 1_000_000
_QUANTUM = Decimal("0.000001")


def to_usd(value: Decimal | float | int | str, *, round_up: bool = False) -> Decimal:
    """Convert to a non-negative Decimal with micro-dollar precision.

    Floats go through ``str`` so 0.1 becomes Decimal("0.1"), not its binary expansion.
    ``round_up`` is used for worst-case reservations so they never under-reserve.
    """
    try:
        amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a dollar amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(f"dollar amount must be finite and >= 0, got {value!r}")
    return amount.quantize(_QUANTUM, rounding=ROUND_CEILING if round_up else ROUND_HALF_EVEN)


def usd_to_micros(value: Decimal | float | int | str, *, round_up: bool = False) -> int:
    """Dollars -> integer micro-dollars."""
    return int(to_usd(value, round_up=round_up) * MICROS_PER_USD)


def micros_to_usd(micros: int) -> Decimal:
    """Integer micro-dollars -> Decimal dollars with six decimal places."""
    return (Decimal(int(micros)) / MICROS_PER_USD).quantize(_QUANTUM)


def optional_micros_to_usd(micros: int | None) -> Decimal | None:
    """Like :func:`micros_to_usd`, passing None (unlimited) through."""
    return None if micros is None else micros_to_usd(micros)
