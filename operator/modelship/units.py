"""Sizes: Kubernetes quantities in, numbers out; bytes out, words for people."""

from __future__ import annotations

import math
import re
from decimal import Decimal

GIB = 1024 ** 3

_SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10 ** 3, "M": 10 ** 6,
           "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18,
           "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")


def quantity(q: int | str) -> Decimal:
    """A Kubernetes quantity ("20Gi", "1.5G", "1e9", "500m", ".5Gi", 4096) as a number;
    ValueError if it is none (the grammar of apimachinery's resource.Quantity)."""
    if isinstance(q, int):
        return Decimal(q)
    m = _QUANTITY.fullmatch(q.strip())
    if not m:
        raise ValueError(f"{q!r} is not a quantity")
    number, exponent, suffix = m.groups()
    return Decimal(number + (exponent or "")) * Decimal(_SUFFIX[suffix or ""])


def quantity_bytes(q: int | str) -> int:
    return math.ceil(quantity(q))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 98362432 -> '93.8 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
