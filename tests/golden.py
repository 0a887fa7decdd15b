"""Golden numbers of every model's smoke config, recorded before the model protocol redesign.

`tests/data/golden/<case>.npz` holds, per case, the variables (`var:<path>`), a fixed
batch x (with labels / cond where the model has them), its log-probs `lp`, and the
samples drawn with `jax.random.key(2)` by the naive and (where one existed) cached
samplers. `python tests/golden.py DIR [CASE ...]` records them; `tests/test_golden.py`
checks that the current code, given the recorded variables (renamed by `RENAMES`),
computes the same log-probs and draws the same samples.
"""

from __future__ import annotations

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

# Parameter paths renamed by the redesign: (model name, regex on the old path, replacement).
RENAMES = [
    ("made", r"^params/MaskedDense_(\d+)/", None),  # resolved by `_made_rename`
    ("made", r"^params/Dense_(\d+)/", r"params/label_layers_\1/"),
]


def _made_rename(path: str, num_hidden: int) -> str:
    m = re.match(r"^params/MaskedDense_(\d+)/(.*)$", path)
    if not m:
        return path
    index = int(m.group(1))
    layer = "out_layer" if index == num_hidden else f"hidden_layers_{index}"
    return f"params/{layer}/{m.group(2)}"


def build(case: str):
    """(cfg, model) of a golden case."""
    path, overrides = CASES[case]
    cfg = jaxar.load_config(path)
    for key, value in overrides.items():
        cfg.model[key] = value
    return cfg, jaxar.build_model(cfg)


def renamed(cfg, flat: dict) -> dict:
    """Recorded `var:` paths mapped to the current names."""
    out = {}
    for path, value in flat.items():
        if cfg.model.name == "made":
            path = _made_rename(path, len(cfg.model.hidden))
        for name, pattern, replacement in RENAMES:
            if name == cfg.model.name and replacement is not None:
                path = re.sub(pattern, replacement, path)
        out[path] = value
    return out


def flatten(tree) -> dict:
    return {
        "/".join(str(getattr(p, "key", p)) for p in path): np.asarray(leaf)
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
        rec.update(x=np.asarray(x), lp=np.asarray(jaxar.log_prob(model, variables, x, labels, cond)))
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
