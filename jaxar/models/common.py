"""Input checks of the public API, and where random numbers are drawn.

The model protocol these checks rely on is `jaxar.models.base`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import flax
import jax
import numpy as np

from jaxar.nn import shifted_layers


def rng_context():
    """Where random numbers are drawn inside jit: non-partitionable threefry on CPU.

    XLA:CPU compiles the partitionable threefry slowly for every weight shape, which
    would dominate initialization and dropout. The values do not depend on the sharding
    either way; accelerators keep the partitionable form, which shards the work.
    """
    if jax.default_backend() == "cpu":
        return jax.threefry_partitionable(False)
    return contextlib.nullcontext()


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_array(name: str, value) -> None:
    """Raises ValueError unless `value` is an array (numpy, jax or a tracer), not e.g. a list."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise ValueError(
            f"{name} must be a numpy or jax array, got {type(value).__name__}"
            + (f" (use np.asarray({name}))" if isinstance(value, list | tuple) else "")
        )


def check_count(name: str, value) -> int:
    """`value` as an int if it is a positive integer (a bool is not a count), else ValueError."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) \
            or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_temperature(temperature) -> None:
    """Raises ValueError unless `temperature` is one finite number > 0: a Python number or
    a 0-d array (a size-1 array of another shape is refused: say which value you mean)."""
    if isinstance(temperature, bool | np.bool_):
        raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
    if hasattr(temperature, "shape"):
        if tuple(temperature.shape) != ():
            raise ValueError(
                f"temperature must be a scalar (a float or a 0-d array), got an array of "
                f"shape {tuple(temperature.shape)}"
            )
        if not np.issubdtype(np.dtype(temperature.dtype), np.number) \
                or np.issubdtype(np.dtype(temperature.dtype), np.complexfloating):
            raise ValueError(f"temperature must be a real number, got dtype "
                             f"{temperature.dtype}")
        if not is_concrete(temperature):
            return
    elif not isinstance(temperature, int | float | np.number) or isinstance(temperature, complex):
        raise ValueError(f"temperature must be a float > 0, got {type(temperature).__name__}")
    value = float(temperature)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be > 0 and finite, got {value!r}")


def check_x(model, x, name: str = "x") -> None:
    """Raises ValueError unless x is an int array `[batch, *event_shape]` in range,
    with batch >= 1."""
    check_array(name, x)
    shape = tuple(x.shape)
    want = "[batch, " + ", ".join(map(str, model.event_shape)) + "]"
    if len(shape) != len(model.event_shape) + 1 or shape[1:] != tuple(model.event_shape):
        raise ValueError(f"{name} must have shape {want}, got {list(shape)}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example, got a batch of 0 "
                         f"(shape {list(shape)})")
    if not np.issubdtype(np.dtype(x.dtype), np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
    if is_concrete(x) and x.size:
        lo, hi = int(np.min(x)), int(np.max(x))
        if lo < 0 or hi >= model.num_levels:
            raise ValueError(
                f"{name} values must lie in [0, {model.num_levels}), got min {lo}, max {hi}"
            )


def check_labels(model, labels, batch: int | None) -> None:
    """Raises ValueError unless labels suit the model's class conditioning."""
    if model.num_classes == 0:
        if labels is not None:
            raise ValueError(
                "labels must be None: this model is unconditional (model.num_classes == 0)"
            )
        return
    if labels is None:
        raise ValueError(
            f"labels are required: this model is class-conditional "
            f"(model.num_classes == {model.num_classes})"
        )
    check_array("labels", labels)
    shape = tuple(labels.shape)
    if batch is not None and shape != (batch,):
        raise ValueError(f"labels must have shape [{batch}], got {list(shape)}")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if is_concrete(labels) and labels.size:
        lo, hi = int(np.min(labels)), int(np.max(labels))
        if lo < 0 or hi >= model.num_classes:
            raise ValueError(
                f"labels must lie in [0, {model.num_classes}), got min {lo}, max {hi}"
            )


def check_cond(model, cond, batch: int | None) -> None:
    """Raises ValueError unless `cond` matches the model's spatial conditioning map: floats,
    or with `model.cond_levels = K > 0` integer codes in [0, K)."""
    cond_shape = tuple(model.cond_shape or ())
    levels = model.cond_levels
    if not cond_shape:
        if cond is not None:
            raise ValueError("cond must be None: this model has no spatial conditioning")
        return
    what = f"an int map of codes in [0, {levels})" if levels else "a float map"
    if cond is None:
        raise ValueError(f"cond is required: {what} of shape [batch, {cond_shape}]")
    check_array("cond", cond)
    shape = tuple(cond.shape)
    if shape[1:] != cond_shape or (batch is not None and shape[0] != batch):
        raise ValueError(f"cond must have shape [batch, *{cond_shape}], got {list(shape)}")
    if levels:
        _check_codes(cond, levels)
    elif is_concrete(cond) and np.issubdtype(np.dtype(cond.dtype), np.inexact):
        bad = int(np.size(cond) - np.count_nonzero(np.isfinite(np.asarray(cond))))
        if bad:
            raise ValueError(f"cond must be finite, got {bad} NaN or infinite value(s)")


def _check_codes(cond, levels: int) -> None:
    if not np.issubdtype(np.dtype(cond.dtype), np.integer):
        raise ValueError(f"cond must be an integer array of codes in [0, {levels}) "
                         f"(model.cond_levels), got dtype {cond.dtype}")
    if is_concrete(cond) and cond.size:
        lo, hi = int(np.min(cond)), int(np.max(cond))
        if lo < 0 or hi >= levels:
            raise ValueError(f"cond values must lie in [0, {levels}) (model.cond_levels), "
                             f"got min {lo}, max {hi}")


def check_inputs(model, x, labels=None, cond=None) -> None:
    """All input checks of the public API, run before anything is traced."""
    check_x(model, x)
    check_labels(model, labels, x.shape[0])
    check_cond(model, cond, x.shape[0])


def check_event_shape(name: str, event_shape, ndim: int | tuple[int, ...]) -> tuple[int, ...]:
    """Validates `data.shape` for a model family that needs `ndim` axes."""
    shape = tuple(int(d) for d in event_shape)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if len(shape) not in ndims or min(shape) < 1:
        raise ValueError(
            f"data.shape for model {name!r} must have {' or '.join(map(str, ndims))} "
            f"positive axes, got {shape}"
        )
    return shape


def check_variables(model, variables) -> None:
    """Raises a one-line ValueError naming `variables` and the first differing path unless
    `variables` holds exactly the collections, names and shapes of `model.init`'s output.

    Another model's (or another config's) variables are refused rather than partly used:
    a 3-class model's label weights given to the unconditional model, a missing
    collection, a kernel of another shape. Dtypes are not compared (parameters may be
    cast). The model's own tree is computed once per model, with `jax.eval_shape`
    (nothing runs); a later call compares treedefs and leaf shapes.
    """
    if not isinstance(variables, Mapping):
        raise ValueError(f"variables must be a dict of collections like {{'params': ...}} "
                         f"(what model.init returns), got {type(variables).__name__}")
    expected, treedef, leaf_shapes = _variable_shapes(model)
    leaves, given_treedef = jax.tree_util.tree_flatten(variables)
    if given_treedef == treedef and all(
            getattr(leaf, "shape", None) == shape
            for leaf, shape in zip(leaves, leaf_shapes, strict=True)):
        return  # the common case, in C++: plain dicts of arrays of the right shapes
    given = _flatten("variables", variables)
    if given.keys() == expected.keys() and all(
            given[path] == shape for path, shape in expected.items()):
        return  # e.g. FrozenDicts, or arrays whose shape is not a tuple of ints
    name = type(model).__name__
    for path in sorted(given.keys() | expected.keys(), key=lambda path: tuple(map(str, path))):
        where = "variables" + "".join(f"[{part!r}]" for part in path)
        if path not in expected:
            raise ValueError(f"{where} is not a variable of this {name} (variables of "
                             f"another model or config?)")
        if path not in given:
            raise ValueError(f"{where} is missing: this {name} has a variable of shape "
                             f"{expected[path]} there")
        if given[path] != expected[path]:
            raise ValueError(f"{where} has shape {given[path]}, this {name}'s has shape "
                             f"{expected[path]}")


def _flatten(where: str, tree, prefix: tuple[str, ...] = ()) -> dict[tuple, tuple]:
    """{path: shape} of a nested mapping's leaves; a leaf that is not an array is refused."""
    flat = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            flat.update(_flatten(where, value, path))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            flat[path] = tuple(int(d) for d in value.shape)
        else:
            shown = where + "".join(f"[{part!r}]" for part in path)
            raise ValueError(f"{shown} must be an array, got {type(value).__name__}")
    return flat


# model -> what `_variable_shapes` returns, and model -> `abstract_variables`; a few
# models at a time.
_SHAPES: dict = {}
_ABSTRACT: dict = {}


def remember_variables(model, variables) -> None:
    """Records what `model.init` just returned as the model's variables, so that the first
    `check_variables` of this model traces nothing."""
    if model not in _SHAPES:
        _store(model, variables)


def _store(model, variables):
    if len(_SHAPES) >= 64:
        _SHAPES.clear()
    variables = flax.core.unfreeze(variables)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    entry = (_flatten("model.init", variables), treedef, [tuple(leaf.shape) for leaf in leaves])
    _SHAPES[model] = entry
    return entry


def _variable_shapes(model) -> tuple[dict, jax.tree_util.PyTreeDef, list[tuple]]:
    """{path: shape} of `model.init`'s variables (`abstract_variables`, unless
    `remember_variables` saw them); the treedef of those variables as plain nested dicts,
    and the shapes of its leaves."""
    if model not in _SHAPES:
        abstract_variables(model)
    return _SHAPES[model]


def abstract_variables(model):
    """`model.init`'s variables as `jax.ShapeDtypeStruct`s, traced abstractly on one
    example (nothing runs) once per model; remembered for `check_variables`."""
    shapes = _ABSTRACT.get(model)
    if shapes is None:
        shapes = _trace_variables(model)
        if len(_ABSTRACT) >= 64:
            _ABSTRACT.clear()
        _ABSTRACT[model] = shapes
    remember_variables(model, shapes)
    return shapes


def _trace_variables(model):
    x = jax.ShapeDtypeStruct((1, *model.event_shape), np.int32)
    labels = jax.ShapeDtypeStruct((1,), np.int32) if model.num_classes else None
    cond = None
    if model.cond_shape:
        dtype = np.int32 if model.cond_levels else np.float32
        cond = jax.ShapeDtypeStruct((1, *model.cond_shape), dtype)
    key = jax.random.key(0)
    with rng_context(), shifted_layers.abstract_init():
        return jax.eval_shape(
            lambda x, labels, cond: model.init({"params": key, "dropout": key}, x, labels, cond),
            x, labels, cond)
