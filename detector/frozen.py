"""``Frozen``: the base of the configuration's frozen dataclasses, cheaper to define.

``@dataclass(frozen=True)`` writes six methods of each class as Python source and compiles each
with ``exec`` when its module is imported (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``, ``__delattr__``): about 0.6 ms a class, and ``detector check`` and ``test`` import
some 50 dataclasses before they do anything. A subclass of ``Frozen`` is a dataclass whose
``__init__`` alone is generated; the other five are written once, here, with the same behaviour:
equality, hash and repr over the fields as ``dataclass`` picks them (``compare``, ``hash``,
``repr``), and a field, once ``__init__`` has set it, can be neither assigned nor deleted
(``FrozenInstanceError``). That is a third of the cost. Type checkers see a frozen dataclass
(``dataclass_transform``). Each assignment in ``__init__`` goes through ``__setattr__`` here, so
classes built per line on the hot path stay ``@dataclass(frozen=True, slots=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, FrozenInstanceError, dataclass, field, fields
from operator import attrgetter
from typing import Any, ClassVar, dataclass_transform


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Frozen:
    """Subclass it instead of writing ``@dataclass(frozen=True)``: ``class Spec(Frozen): ...``."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    _compared: ClassVar[Callable[[Any], object]]  # the values __eq__ compares
    _hashed: ClassVar[Callable[[Any], object]]
    _shown: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(eq=False, repr=False)(cls)
        every = fields(cls)
        cls._compared = _getter([f.name for f in every if f.compare])
        cls._hashed = _getter([f.name for f in every if (f.compare if f.hash is None else f.hash)])
        cls._shown = tuple(f.name for f in every if f.repr)

    def __setattr__(self, name: str, value: object) -> None:
        # __init__ sets each field once; after that nothing is set, as on a frozen dataclass
        if name in self.__dict__ or name not in self.__dataclass_fields__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        values = type(self)._compared
        return bool(values(self) == values(other))

    def __hash__(self) -> int:
        return hash(type(self)._hashed(self))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._shown)
        return f"{self.__class__.__qualname__}({shown})"


def _getter(names: list[str]) -> Callable[[Any], object]:
    """The fields' values, compared or hashed as one (of one field, its bare value)."""
    return attrgetter(*names) if names else lambda _: ()
