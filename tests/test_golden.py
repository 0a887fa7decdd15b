"""No model's numbers move: recorded parameters give the recorded log-probs and samples."""

from __future__ import annotations

import pathlib

import golden
import jax
import numpy as np
import pytest
from flax import traverse_util

import jaxar
from jaxar.models import common

DATA = pathlib.Path(__file__).parent / "data" / "golden"


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_recorded_parameters_give_recorded_log_probs_and_samples(case):
    rec = dict(np.load(DATA / f"{case}.npz"))
    cfg, model = golden.build(case)
    flat = golden.renamed(cfg, {k[4:]: v for k, v in rec.items() if k.startswith("var:")})
    # The names and shapes a new model's variables have (eval_shape: no init to compile;
    # the tree check_variables compares, traced once).
    fresh = golden.flatten(common.abstract_variables(model))
    assert sorted(flat) == sorted(fresh), "parameter names differ from the model's"
    for path, value in flat.items():
        assert value.shape == fresh[path].shape, path
    variables = traverse_util.unflatten_dict(flat, sep="/")
    labels, cond = rec.get("labels"), rec.get("cond")
    lp = jaxar.log_prob(model, variables, rec["x"], labels, cond)
    np.testing.assert_allclose(np.asarray(lp), rec["lp"], rtol=1e-5, atol=1e-5)
    # The default method (the cached decoder) against the recorded naive samples, which
    # every method must draw: that the methods agree is proven per family, ordering and
    # conditioning mode in tests/test_protocol.py, so one sampler program per case here.
    xs = jaxar.sample(model, variables, jax.random.key(2), 2, labels=labels, cond=cond)
    np.testing.assert_array_equal(np.asarray(xs), rec["samples_naive"])
