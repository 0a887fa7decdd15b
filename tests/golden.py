"""Golden numbers of every model's smoke config: recorded variables, log-probs and samples
that the models must keep reproducing.

`tests/data/golden/<case>.npz` holds, per case, the variables (`var:<path>`), a fixed
batch x (with labels / cond where the model has them), its log-probs `lp`, and the
samples drawn with `jax.random.key(2)` by the naive and (where one existed) cached
samplers. `python tests/golden.py DIR [CASE ...]` records them; `tests/test_golden.py`
checks that the current code, given the recorded variables (renamed by `RENAMES`),
computes the same log-probs and draws the same samples.
"""

from __future__ import annotations

import collections
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxar

CASES = {
    "made": ("experiments/made_mnist.py:smoke", {}),
    "pixelcnn": ("experiments/pixelcnn_mnist.py:smoke", {}),
    "pixelcnn_class": ("experiments/pixelcnn_mnist.py:smoke", {"num_classes": 3}),
    "gated_pixelcnn": ("experiments/gated_pixelcnn_mnist.py:smoke", {}),
    "gated_pixelcnn_class_lowres": (
        "experiments/gated_pixelcnn_mnist.py:smoke", {"num_classes": 3, "cond_shape": (4, 4, 1)}
    ),
    "pixelcnn_pp": ("experiments/pixelcnn_pp_cifar10.py:smoke", {}),
    "pixelcnn_pp_class": ("experiments/pixelcnn_pp_cifar10.py:smoke", {"num_classes": 3}),
    "pixelsnail": ("experiments/pixelsnail_cifar10.py:smoke", {}),
    "pixelsnail_zigzag": ("experiments/pixelsnail_cifar10.py:smoke", {"ordering": "zigzag"}),
    "wavenet": ("experiments/wavenet_mnist.py:smoke", {}),
    "wavenet_audio": ("experiments/wavenet_audio.py:smoke", {}),
    "transformer": ("experiments/transformer_mnist.py:smoke", {}),
}

# The recordings' parameter paths (an older module layout), per model: recorded path ->
# the model's path (None: no counterpart).


def _made(path: str, model_cfg) -> str:
    m = re.match(r"^params/(MaskedDense|Dense)_(\d+)/(.*)$", path)
    if not m:
        return path
    kind, index, rest = m.group(1), int(m.group(2)), m.group(3)
    if kind == "Dense":
        return f"params/label_layers_{index}/{rest}"
    layer = "out_layer" if index == len(model_cfg.hidden) else f"hidden_layers_{index}"
    return f"params/{layer}/{rest}"


def _gated_pixelcnn(path: str, model_cfg) -> str | None:
    m = re.match(r"^params/([A-Za-z0-9]+)_(\d+)/(.*)$", path)
    if not m:
        return path
    kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
    layers = model_cfg.num_layers
    if kind in ("VerticalStackConv", "HorizontalStackConv", "Conv"):
        stack = {"VerticalStackConv": ("v_in", "v_convs"), "HorizontalStackConv":
                 ("h_in", "h_convs"), "Conv": ("v_to_h_in", "v_to_h")}[kind]
        name = stack[0] if i == 0 else f"{stack[1]}_{i - 1}"
    elif kind == "GatedActivation":
        if i % 2 == 0 and i // 2 == layers - 1:
            return None  # the last vertical gate fed nothing; it no longer exists
        name = f"{'hv'[i % 2 == 0]}_gates_{i // 2}"
    elif kind == "MaskedConv2D":
        name = {2 * layers: "head", 2 * layers + 1: "out"}.get(
            i, f"{'skips' if i % 2 == 0 else 'residuals'}_{i // 2}")
    elif kind == "ConvTranspose":
        name = "cond_upsample"
    else:
        return path
    return f"params/{name}/{rest}"


def _pixelcnn_pp_layers(model_cfg) -> list[tuple[str, str]]:
    """(module kind, new name) of PixelCNN++'s layers in the order the old `__call__` made them."""
    res, nr = model_cfg.num_resolutions, model_cfg.num_resnets
    layers = [("WNConv", "u_in"), ("WNConv", "ul_above"), ("WNConv", "ul_left")]
    for lvl in range(res):
        if lvl:
            layers += [("WNConv", f"up{lvl}_u_conv"), ("WNConv", f"up{lvl}_ul_conv")]
        for k in range(nr):
            layers += [("GatedResnet", f"up{lvl}_u_res{k}"), ("GatedResnet", f"up{lvl}_ul_res{k}")]
    for lvl in reversed(range(res)):
        if lvl < res - 1:
            layers += [("WNConv", f"down{lvl}_u_conv"), ("WNConv", f"down{lvl}_ul_conv")]
        for k in range(nr + (lvl < res - 1)):
            layers += [("GatedResnet", f"down{lvl}_u_res{k}"),
                       ("GatedResnet", f"down{lvl}_ul_res{k}")]
    return layers + [("WNDense", "out")]


def _pixelsnail_layers(model_cfg) -> list[tuple[str, str]]:
    """(module kind, new name) of PixelSNAIL's layers in the order the old `__call__` made them."""
    if model_cfg.ordering == "raster":
        layers = [("WNConv", "ul_above"), ("WNConv", "ul_left")]
    else:
        layers = [("WNDense", "shift_in")]
    for b in range(model_cfg.num_blocks):
        layers += [("GatedResnet", f"block{b}_res{k}") for k in range(model_cfg.num_resnets)]
        layers += [("GatedResnet", f"block{b}_content"), ("WNDense", f"block{b}_kv"),
                   ("GatedResnet", f"block{b}_query_res"), ("WNDense", f"block{b}_query"),
                   ("GatedResnet", f"block{b}_out")]
    return layers + [("WNDense", "out")]


def _by_creation_order(layers_of):
    """A renamer from flax's automatic names (`<Kind>_<count per kind>`, in creation order);
    a gated resnet's label layer `Dense_0` is now `label_bias`."""

    def rename(path: str, model_cfg) -> str:
        m = re.match(r"^params/([A-Za-z]+_\d+)/(.*)$", path)
        if not m:
            return path
        counts, names = collections.Counter(), {}
        for kind, new in layers_of(model_cfg):
            names[f"{kind}_{counts[kind]}"] = new
            counts[kind] += 1
        rest = re.sub(r"^Dense_0/", "label_bias/", m.group(2))
        return f"params/{names[m.group(1)]}/{rest}"

    return rename


RENAMERS = {
    "made": _made,
    "gated_pixelcnn": _gated_pixelcnn,
    "pixelcnn_pp": _by_creation_order(_pixelcnn_pp_layers),
    "pixelsnail": _by_creation_order(_pixelsnail_layers),
}


def build(case: str):
    """(cfg, model) of a golden case."""
    path, overrides = CASES[case]
    cfg = jaxar.load_config(path)
    for key, value in overrides.items():
        cfg.model[key] = value
    return cfg, jaxar.build_model(cfg)


def renamed(cfg, flat: dict) -> dict:
    """Recorded `var:` paths mapped to the current names (`RENAMERS`)."""
    rename = RENAMERS.get(cfg.model.name, lambda path, model_cfg: path)
    out = {}
    for path, value in flat.items():
        new = rename(path, cfg.model)
        if new is not None:
            out[new] = value
    return out


def flatten(tree) -> dict:
    """`{"a/b/c": leaf}`: arrays as numpy, shapes (`jax.ShapeDtypeStruct`) as they are."""
    return {
        "/".join(str(getattr(p, "key", p)) for p in path):
            leaf if isinstance(leaf, jax.ShapeDtypeStruct) else np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def record(outdir: str, cases) -> None:
    for case in cases:
        cfg, model = build(case)
        variables = jaxar.init_variables(model, cfg, jax.random.key(0))
        x = jax.random.randint(jax.random.key(1), (2, *model.event_shape), 0, model.num_levels)
        labels = jnp.array([0, model.num_classes - 1], jnp.int32) if model.num_classes else None
        cond = model.derive_cond(x)
        rec = {f"var:{k}": v for k, v in flatten(variables).items()}
        lp = jaxar.log_prob(model, variables, x, labels, cond)
        rec.update(x=np.asarray(x), lp=np.asarray(lp))
        if labels is not None:
            rec["labels"] = np.asarray(labels)
        if cond is not None:
            rec["cond"] = np.asarray(cond)
        for method in ("naive", "cached"):
            xs = jaxar.sample(model, variables, jax.random.key(2), num_samples=2, labels=labels,
                              cond=cond, method=method)
            rec[f"samples_{method}"] = np.asarray(xs)
        np.savez_compressed(f"{outdir}/{case}.npz", **rec)


if __name__ == "__main__":
    record(sys.argv[1], sys.argv[2:] or list(CASES))
