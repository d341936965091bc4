"""One validation layer for the numbers that cross a boundary (CLI flags, API arguments).

Torch-free; both packages use it. Every check returns the value (converted) or raises
`CheckError` (a ValueError) with one line that names the argument, the value given and
the range allowed. NaN and infinities are refused everywhere:

    count("--batch", 0)          -> CheckError: --batch=0 must be an integer >= 1
    positive("--timeout", 0)     -> CheckError: --timeout=0 must be a finite number > 0
    positive("cr", nan)          -> CheckError: cr=nan must be a finite number > 0

The `arg_*` helpers are argparse `type=` callables built on the same checks, so a bad
flag fails while parsing, with the same wording.
"""
from __future__ import annotations

import argparse
import math
import numbers
import re
from typing import Optional


class CheckError(ValueError):
    """A number outside its allowed range (one line; names the argument and the range)."""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    return str(v)


def _real(name: str, v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
        raise CheckError(f"{name}={_fmt(v)} must be {what}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise CheckError(f"{name}={_fmt(v)} must be {what}") from None
    if not math.isfinite(x):
        raise CheckError(f"{name}={_fmt(x)} must be {what}")
    return x


def count(name: str, v, *, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer >= minimum (and <= maximum): batch sizes, world sizes, threads, repeats."""
    rng = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    x = _real(name, v, rng)
    if x != int(x) or x < minimum or (maximum is not None and x > maximum):
        raise CheckError(f"{name}={_fmt(v)} must be {rng}")
    return int(x)


def positive(name: str, v, *, unit: str = "") -> float:
    """A finite number > 0: rates, times, timeouts, compression rates."""
    what = "a finite number > 0" + (f" ({unit})" if unit else "")
    x = _real(name, v, what)
    if x <= 0:
        raise CheckError(f"{name}={_fmt(v)} must be {what}")
    return x


def nonnegative(name: str, v, *, unit: str = "") -> float:
    """A finite number >= 0 (a delay, a threshold that may be zero)."""
    what = "a finite number >= 0" + (f" ({unit})" if unit else "")
    x = _real(name, v, what)
    if x < 0:
        raise CheckError(f"{name}={_fmt(v)} must be {what}")
    return x


def within(name: str, v, lo: float, hi: float, *, open_lo: bool = True, open_hi: bool = True) -> float:
    """A finite number in (lo, hi) (brackets per open_lo / open_hi): coverages, weights."""
    what = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    x = _real(name, v, what)
    if (x <= lo if open_lo else x < lo) or (x >= hi if open_hi else x > hi):
        raise CheckError(f"{name}={_fmt(v)} must be {what}")
    return x


def finite(name: str, v) -> float:
    """Any finite number."""
    return _real(name, v, "a finite number")


def optional(check, name: str, v, **kw):
    """`check(name, v)` unless v is None."""
    return None if v is None else check(name, v, **kw)


# ---------------------------------------------------------------- argparse type= helpers

def _argtype(check, **kw):
    def parse(s: str):
        try:
            return check("", s, **kw)
        except CheckError as e:
            # argparse prefixes "argument --flag: invalid ... value" itself; keep ours short
            raise argparse.ArgumentTypeError(f"{s!r} must be {str(e).split(' must be ', 1)[1]}") from None
    parse.__name__ = check.__name__     # argparse names the type in its messages
    return parse


def arg_count(minimum: int = 1, maximum: Optional[int] = None):
    """argparse type: an integer >= minimum."""
    return _argtype(count, minimum=minimum, maximum=maximum)


def arg_positive(unit: str = ""):
    """argparse type: a finite number > 0."""
    return _argtype(positive, unit=unit)


def arg_nonnegative(unit: str = ""):
    """argparse type: a finite number >= 0."""
    return _argtype(nonnegative, unit=unit)


def arg_within(lo: float, hi: float, **kw):
    """argparse type: a finite number in (lo, hi)."""
    return _argtype(within, lo=lo, hi=hi, **kw)


_ARG_MSG = re.compile(r"^argument (\S+?)(?:/\S+)?: '(.*)' must be (.*)$")


def argparse_message(message: str) -> str:
    """argparse's "argument --batch: '0' must be ..." (a failed `arg_*` type) as this
    module words it: "--batch=0 must be ..."; other messages unchanged."""
    m = _ARG_MSG.match(message)
    return f"{m.group(1)}={m.group(2)} must be {m.group(3)}" if m else message
