"""``detector.frozen.Frozen`` behaves as ``@dataclass(frozen=True)`` does: each class here is
compared with the same class written as a frozen dataclass, on equality, hash, repr, the fields'
options, ``replace``, copies, pickling and every way of changing an instance."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, asdict, dataclass, field, fields, replace
from datetime import timedelta

import pytest

from detector.frozen import Frozen
from detector.model import Location, RuleConfig


class Spec(Frozen):
    name: str
    every: timedelta = timedelta(minutes=1)
    tags: tuple[str, ...] = ()
    note: str = field(default="", compare=False)  # neither compared nor hashed
    secret: str = field(default="", repr=False)
    cache: int = field(default=0, hash=False)  # compared, not hashed


@dataclass(frozen=True)
class SpecDataclass:
    name: str
    every: timedelta = timedelta(minutes=1)
    tags: tuple[str, ...] = ()
    note: str = field(default="", compare=False)
    secret: str = field(default="", repr=False)
    cache: int = field(default=0, hash=False)


class Child(Spec):
    extra: int = 0


class One(Frozen):
    value: int


ARGS = [
    {"name": "a"},
    {"name": "a", "note": "other note"},
    {"name": "a", "cache": 1},
    {"name": "a", "secret": "s3cret", "tags": ("x", "y")},
    {"name": "b", "every": timedelta(seconds=5)},
]


@pytest.mark.parametrize("left", ARGS)
@pytest.mark.parametrize("right", ARGS)
def test_equality_and_hash_are_the_dataclass_ones(
    left: dict[str, object], right: dict[str, object]
) -> None:
    ours = Spec(**left) == Spec(**right)  # type: ignore[arg-type]
    theirs = SpecDataclass(**left) == SpecDataclass(**right)  # type: ignore[arg-type]
    assert ours is theirs
    ours_hash = hash(Spec(**left)) == hash(Spec(**right))  # type: ignore[arg-type]
    theirs_hash = hash(SpecDataclass(**left)) == hash(SpecDataclass(**right))  # type: ignore[arg-type]
    assert ours_hash is theirs_hash
    if ours:
        assert ours_hash


@pytest.mark.parametrize("args", ARGS)
def test_repr_is_the_dataclass_one(args: dict[str, object]) -> None:
    ours = repr(Spec(**args))  # type: ignore[arg-type]
    assert ours == repr(SpecDataclass(**args)).replace("SpecDataclass(", "Spec(", 1)  # type: ignore[arg-type]
    assert "s3cret" not in ours


def test_other_classes_and_tuples_are_not_equal() -> None:
    spec = Spec("a")
    assert spec != Child("a")
    assert Child("a") == Child("a") != Child("a", extra=1)
    assert spec != ("a", timedelta(minutes=1), (), "", "", 0)
    assert One(1) == One(1) != One(2)
    assert hash(One(1)) == hash(One(1))
    assert {One(1), One(1), One(2)} == {One(1), One(2)}


def test_no_field_can_be_set_or_deleted_once_built() -> None:
    spec = Spec("a", tags=("x",))
    with pytest.raises(FrozenInstanceError, match="'name'"):
        spec.name = "b"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError, match="'other'"):
        spec.other = 1  # type: ignore[attr-defined]
    with pytest.raises(FrozenInstanceError, match="'tags'"):
        del spec.tags  # type: ignore[misc]
    assert spec == Spec("a", tags=("x",))
    with pytest.raises(FrozenInstanceError):
        Child("a").extra = 2  # type: ignore[misc]


def test_it_is_a_dataclass_to_the_dataclasses_module_copies_and_pickle() -> None:
    spec = Child("a", tags=("x",), note="n", extra=3)
    assert [f.name for f in fields(spec)] == [
        "name",
        "every",
        "tags",
        "note",
        "secret",
        "cache",
        "extra",
    ]
    assert asdict(spec)["extra"] == 3
    changed = replace(spec, name="b")
    assert (changed.name, changed.extra, spec.name) == ("b", 3, "a")
    for again in (copy.copy(spec), copy.deepcopy(spec), pickle.loads(pickle.dumps(spec))):
        assert again == spec and again.note == "n"
        with pytest.raises(FrozenInstanceError):
            again.name = "c"  # type: ignore[misc]
    assert Child.__match_args__ == ("name", "every", "tags", "note", "secret", "cache", "extra")


def test_the_configuration_model_is_built_on_it() -> None:
    loc = Location("rules.yaml", 3, 5)
    rule = RuleConfig(name="r", kind="error", sources=("app",), match="x", location=loc)
    assert replace(rule, labels={"a": "b"}) != rule == replace(rule)
    assert repr(loc) == "Location(file='rules.yaml', line=3, column=5)"
    with pytest.raises(TypeError, match="unhashable"):  # a dict field, as with dataclass
        hash(rule)
