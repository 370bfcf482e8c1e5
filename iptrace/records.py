"""Building slots records (frozen dataclasses, Outcome) without their `__init__`: the walks and the Service view make
~10^5 of them, and a frozen dataclass sets each field through `object.__setattr__`. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def positional_new(cls: type, names: Sequence[str]) -> Callable[..., Any]:
    """`new(*values)`: an instance of slots class `cls` with slot `names[i]` set to `values[i]`, not through
    `__init__` (a frozen dataclass sets each field with `object.__setattr__`, two to three times slower; a
    Service view builds ~10^5 of these). The values are stored into a twin of `cls` (the same slots over the same
    base, storing attributes the plain way) with plain attribute stores, and the object then becomes a `cls`:
    half the cost of calling each slot's descriptor. Classes the twin cannot mirror take the descriptors."""
    twin = _twin(cls)
    if twin is not None:
        namespace: dict[str, object] = {"_new": object.__new__, "twin": twin, "cls": cls}
        lines = [f"def new({', '.join(names)}):", "    self = _new(twin)"]
        lines += [f"    self.{name} = {name}" for name in names]
        exec("\n".join([*lines, "    self.__class__ = cls", "    return self"]), namespace)
        return namespace["new"]  # type: ignore[return-value]
    namespace = {"_new": object.__new__, "cls": cls}
    lines = [f"def new({', '.join(names)}):", "    self = _new(cls)"]
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(self, {name})")
    exec("\n".join([*lines, "    return self"]), namespace)
    return namespace["new"]  # type: ignore[return-value]


def _twin(cls: type) -> type | None:
    """A class laid out like `cls` (a subclass of its base with the same `__slots__`, storing attributes the
    plain way) that an instance can be switched from to `cls` by assigning `__class__`; None when there is none
    (CPython allows the switch between classes that add the same slots to the same base)."""
    slots = cls.__dict__.get("__slots__")
    if slots is None or len(cls.__bases__) != 1:
        return None
    body: dict[str, object] = {"__slots__": tuple(slots)}
    if cls.__bases__[0].__setattr__ is not object.__setattr__:  # (a frozen dataclass's base refuses stores)
        body["__setattr__"] = object.__setattr__
    twin = type(f"_{cls.__name__}Twin", cls.__bases__, body)
    probe = object.__new__(twin)
    try:
        probe.__class__ = cls
    except TypeError:
        return None
    return twin
