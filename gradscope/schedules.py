"""Sampling schedules: a schedule is a function ``step -> bool``.

An ``int`` ``k`` is shorthand for :func:`every` ``(k)``.

Example:
    >>> from gradscope.schedules import every, log_schedule
    >>> [s for s in range(12) if every(5)(s)]
    [0, 5, 10]
    >>> [s for s in range(40) if log_schedule(base=2)(s)]
    [0, 1, 2, 4, 8, 16, 32]
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Union

__all__ = ["Schedule", "as_schedule", "every", "log_schedule"]

Schedule = Callable[[int], bool]


def every(n: int, *, offset: int = 0) -> Schedule:
    """Sample step ``s`` when ``(s - offset) % n == 0`` and ``s >= offset``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"every(n={n!r}): n must be an int >= 1 (1 samples every step)")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"every(offset={offset!r}): offset must be an int >= 0")

    def schedule(step: int) -> bool:
        return step >= offset and (step - offset) % n == 0

    schedule.__qualname__ = f"every({n})"
    return schedule


def log_schedule(*, base: float = 2.0, dense_until: int = 1) -> Schedule:
    """Sample steps ``0 .. dense_until-1`` and then each integer power of ``base``.

    Useful for long runs where early training changes fastest.
    """
    if not base > 1:
        raise ValueError(f"log_schedule(base={base!r}): base must be > 1")
    if dense_until < 0:
        raise ValueError(f"log_schedule(dense_until={dense_until!r}) must be >= 0")

    def schedule(step: int) -> bool:
        if step < dense_until:
            return True
        if step < 1:
            return False
        k = round(math.log(step, base))
        return any(round(base ** j) == step for j in (k - 1, k, k + 1) if j >= 0)

    return schedule


def as_schedule(value: Union[int, Schedule], *, name: str = "every") -> Schedule:
    """Turn an ``int`` or a callable into a schedule, with an error naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: pass an int >= 1 or a callable step -> bool")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name}={value!r}: must be >= 1 (1 samples every step)")
        return every(value)
    if callable(value):
        try:
            inspect.signature(value).bind(0)
        except TypeError as err:  # wrong arity: it would raise at every step
            raise TypeError(f"{name}={value!r}: a schedule is called with the step number and "
                            f"returns True to sample it (step -> bool), but it cannot take one "
                            f"argument ({err}); e.g. {name}=lambda step: step % 10 == 0") from None
        except ValueError:  # no signature to read (a builtin): trusted
            pass
        return value
    raise TypeError(f"{name}={value!r}: pass an int >= 1 or a callable step -> bool")


def verdict(value: object, step: int, *, name: str = "every") -> bool:
    """A schedule's answer for ``step``, which must be a bool (``numpy.bool_`` too): a string
    or a number would be taken by its truthiness (``"no"`` samples).

    Raises:
        TypeError: ``value`` is not a bool.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name}=...: a schedule must return True or False (sample step {step} "
                    f"or not); it returned {value!r} ({type(value).__name__}); e.g. "
                    f"{name}=lambda step: step % 10 == 0")
