"""A family that lacks a member of the model protocol fails when its class is defined."""

from __future__ import annotations

import pytest

from jaxar.models import REGISTRY, base, configs


def define(name: str, autoregressive: bool = True, **members):
    """Defines a `base.Model` subclass with the given members and the two required fields."""
    namespace = {"__annotations__": {"event_shape": tuple, "num_levels": int},
                 "autoregressive": autoregressive, "num_classes": 0, **members}
    return type(name, (base.Model,), namespace)


def call(self, x, labels=None, cond=None, train=False):
    return x


def test_a_complete_family_is_defined():
    cls = define("Complete", __call__=call, likelihood=property(lambda self: None),
                 decoder=lambda self, variables, labels, cond, batch: None)
    assert cls.autoregressive and "event_shape" in cls.__dataclass_fields__
    # Not an autoencoder: no likelihood and no decoder needed.
    assert not define("Autoencoder", autoregressive=False, __call__=call).autoregressive


@pytest.mark.parametrize("lacking, members", [
    ("decoder", {"__call__": call, "likelihood": property(lambda self: None)}),
    ("likelihood", {"__call__": call, "decoder": lambda self, *a: None}),
    ("__call__", {"likelihood": property(lambda self: None), "decoder": lambda self, *a: None}),
    ("likelihood, decoder", {"__call__": call}),
])
def test_a_family_lacking_a_member_fails_at_definition(lacking, members):
    with pytest.raises(TypeError, match=f"Partial does not define the model protocol's "
                                        f"{lacking} "):
        define("Partial", **members)


def test_a_family_lacking_a_field_fails_at_definition():
    namespace = {"__annotations__": {"num_levels": int}, "autoregressive": False,
                 "num_classes": 0, "__call__": call}
    with pytest.raises(TypeError, match="NoShape does not define the model protocol's "
                                        "event_shape"):
        type("NoShape", (base.Model,), namespace)


def test_a_subclass_of_a_family_inherits_its_members_but_not_its_spec():
    family = REGISTRY["pixelcnn"]
    sub = type("Sub", (family,), {})  # defines nothing itself: the check passes
    assert configs.spec_of(family).event_ndim == 3
    with pytest.raises(TypeError, match="Sub has no config Spec"):
        configs.spec_of(sub)
