"""From `cfg.model` to a model: one strict builder for every family.

A model's settings are the fields of its flax Module, a frozen dataclass whose
defaults are the only defaults. `build(cls, model_cfg, event_shape, num_levels)`:

* maps every key of `model_cfg` to a field: `model.<field>`, or the key a family's
  alias table names (`model.likelihood` -> `likelihood_name`); `event_shape` and
  `num_levels` come from `data.shape` / `data.num_levels`, and `parent` / `name`
  are flax's, so none of them is a config key (`model.name` picks the family);
* fills every field the config leaves out, or sets to None, from the dataclass;
* turns lists into tuples for tuple fields and checks every value's type against
  its field's annotation (ints >= 0, the family's size fields >= 1);
* refuses any key the model does not read with a ValueError that names it, lists
  the valid ones and, when one is close, asks "did you mean";
* accepts a key every experiment shares (`jaxar.settings.MODEL_SHARED`) that the model
  does not read only at its default, and a family's fixed keys (PixelCNN++'s
  `model.likelihood`) only at their one value;
* runs the family's own checks (`Spec.check`) on the resolved fields.

Each model file declares its class's `Spec` at its bottom (`register`, which stores
it on the class: `jaxar.models.REGISTRY` is the one registry of families).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxar import settings
from jaxar.models import common

# Dataclass fields that are never config keys.
NOT_CONFIG = ("event_shape", "num_levels", "parent", "name")


@dataclasses.dataclass(frozen=True)
class Spec:
    """How a model family reads `cfg.model` (besides its dataclass fields).

    event_ndim: the number(s) of axes `data.shape` may have.
    aliases: config key -> field, for fields whose config key differs.
    fixed: config keys the family does not read, accepted only at this value.
    derived: config keys that are not fields, with their defaults; `check` turns them
      into fields (and removes them from the dict).
    positive: int or tuple-of-int fields that must be >= 1 (every int is >= 0).
    check(fields, given): the family's value checks on the resolved keyword arguments
      (it may also set fields whose default depends on others); `given` holds the
      fields (and derived keys) the config set.
    """

    event_ndim: int | tuple[int, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    derived: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    positive: tuple[str, ...] = ()
    check: Callable[[dict, frozenset], None] | None = None


def register(cls: type, spec: Spec) -> type:
    """Declares how `cls` is built from a config: its `config_spec`."""
    cls.config_spec = spec
    return cls


def spec_of(cls: type) -> Spec:
    # `vars`: a subclass does not inherit its parent's Spec.
    if not isinstance(vars(cls).get("config_spec"), Spec):
        raise TypeError(f"{cls.__name__} has no config Spec: call configs.register")
    return cls.config_spec


def unknown_key(section: str, key: str, valid: Iterable[str], owner: str = "") -> ValueError:
    """The one-line error for `section.key` that is not among `valid`."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    where = f" for {owner}" if owner else ""
    name = f"{section}.{key}" if section else key
    return ValueError(f"unknown config key {name}{where}{hint} valid keys: {', '.join(valid)}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in NOT_CONFIG}


def config_keys(cls) -> dict[str, str | None]:
    """Every key `cls` reads under `cfg.model` -> its field (None: not a field)."""
    spec = spec_of(cls)
    fields = _fields(cls)
    to_key = {field: key for key, field in spec.aliases.items()}
    keys = {to_key.get(f, f): f for f in fields}
    keys.update({key: None for key in (*spec.derived, *spec.fixed)})
    keys.update({key: None for key in settings.MODEL_SHARED if key not in keys})
    keys["name"] = None
    return keys


def _kind(field: dataclasses.Field) -> str:
    """"int", "float", "str", "bool", "tuple" or "tuple[int]" from a field's annotation."""
    annotation = str(field.type).replace(" ", "")
    if annotation.startswith("tuple[int"):
        return "tuple[int]"
    for kind in ("tuple", "bool", "int", "float", "str"):
        if annotation.startswith(kind):
            return kind
    return "any"


def _checked(key: str, kind: str, value):
    """`value` of a field of `kind`, lists as tuples; ValueError if it has another type."""
    is_int = settings.is_int
    if kind == "int" and is_int(value):
        return value
    if kind == "float" and (is_int(value) or isinstance(value, float)):
        return value
    if kind == "str" and isinstance(value, str) or kind == "bool" and isinstance(value, bool):
        return value
    if kind.startswith("tuple") and isinstance(value, tuple | list):
        if kind == "tuple" or all(is_int(v) for v in value):
            return tuple(value)
    if kind == "any":
        return value
    what = {"int": "an int", "tuple[int]": "a tuple of ints"}.get(kind, f"a {kind}")
    raise ValueError(f"model.{key} must be {what}, got {value!r}")


def _as_dict(model_cfg) -> dict:
    return {key: model_cfg[key] for key in model_cfg.keys()}  # resolves FieldReferences


def build(cls, model_cfg, event_shape, num_levels: int, name: str | None = None):
    """The `cls` model that `model_cfg` (`cfg.model`) describes, for data of
    `event_shape` with `num_levels` levels; ValueError for any bad key or value."""
    spec = spec_of(cls)
    config = _as_dict(model_cfg)
    name = name or config.get("name") or cls.__name__
    if not isinstance(event_shape, tuple | list) or not all(map(settings.is_int, event_shape)):
        raise ValueError(f"data.shape must be a tuple of positive ints, got {event_shape!r}")
    shape = common.check_event_shape(name, event_shape, spec.event_ndim)
    keys = config_keys(cls)
    fields = _fields(cls)
    kwargs = {f: _default(field) for f, field in fields.items()}
    kwargs.update(spec.derived)
    given = set()
    for key, value in config.items():
        if key == "name":
            continue
        if key not in keys:
            raise unknown_key("model", key, keys, f"model {name!r}")
        field = keys[key]
        if field is None and key not in spec.derived:  # shared or fixed: not read
            only = spec.fixed.get(key, settings.MODEL_SHARED.get(key))
            if value is not None and value != only:  # None: unset
                raise ValueError(
                    f"model.{key} must be {only!r}, got {value!r}: {name} only supports "
                    f"{key} {only!r}"
                )
            continue
        if value is None:  # unset (a placeholder): the default
            continue
        target = field or key
        kind = _kind(fields[field]) if field else _kind_of_default(spec.derived[key])
        kwargs[target] = _checked(key, kind, value)
        given.add(target)
    key_of = {(field or key): key for key, field in keys.items()}
    for target, value in kwargs.items():
        key = key_of.get(target, target)
        values = value if isinstance(value, tuple) else (value,)
        ints = [v for v in values if settings.is_int(v)]
        low = 1 if target in spec.positive else 0
        if any(v < low for v in ints):
            raise ValueError(f"model.{key} must be >= {low}, got {value!r}")
    kwargs.update(event_shape=shape, num_levels=num_levels)
    if spec.check is not None:
        spec.check(kwargs, frozenset(given))
    return cls(**kwargs)


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is dataclasses.MISSING:
        raise TypeError(f"model field {field.name} has no default: give it one")
    return field.default


def _kind_of_default(default) -> str:
    if isinstance(default, bool):
        return "bool"
    return type(default).__name__ if isinstance(default, int | float | str) else "any"
