"""Records, for each model's smoke config, parameters, log-probs of a fixed batch and samples."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxar
from jaxar.models import default_cond

CASES = {
    "made": ("experiments/made_mnist.py:smoke", {}),
    "pixelcnn": ("experiments/pixelcnn_mnist.py:smoke", {}),
    "pixelcnn_class": ("experiments/pixelcnn_mnist.py:smoke", {"model.num_classes": 3}),
    "gated_pixelcnn": ("experiments/gated_pixelcnn_mnist.py:smoke", {}),
    "gated_pixelcnn_class_lowres": ("experiments/gated_pixelcnn_mnist.py:smoke",
                                    {"model.num_classes": 3, "model.cond_shape": (4, 4, 1)}),
    "pixelcnn_pp": ("experiments/pixelcnn_pp_cifar10.py:smoke", {}),
    "pixelcnn_pp_class": ("experiments/pixelcnn_pp_cifar10.py:smoke", {"model.num_classes": 3}),
    "pixelsnail": ("experiments/pixelsnail_cifar10.py:smoke", {}),
    "pixelsnail_zigzag": ("experiments/pixelsnail_cifar10.py:smoke", {"model.ordering": "zigzag"}),
    "wavenet": ("experiments/wavenet_mnist.py:smoke", {}),
    "wavenet_audio": ("experiments/wavenet_audio.py:smoke", {}),
    "transformer": ("experiments/transformer_mnist.py:smoke", {}),
}

def flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(leaf)
    return out

def main(outdir):
    for name, (path, overrides) in CASES.items():
        if len(sys.argv) > 2 and name not in sys.argv[2:]:
            continue
        cfg = jaxar.load_config(path)
        for k, v in overrides.items():
            a, b = k.split(".")
            cfg[a][b] = v
        model = jaxar.build_model(cfg)
        variables = jaxar.init_variables(model, cfg, jax.random.key(0))
        x = jax.random.randint(jax.random.key(1), (2, *model.event_shape), 0, model.num_levels)
        labels = jnp.array([0, model.num_classes - 1], jnp.int32) if model.num_classes else None
        cond = default_cond(model, x)
        lp = jaxar.log_prob(model, variables, x, labels, cond)
        rec = {f"var:{k}": v for k, v in flat(variables).items()}
        rec.update(x=np.asarray(x), lp=np.asarray(lp))
        if labels is not None:
            rec["labels"] = np.asarray(labels)
        if cond is not None:
            rec["cond"] = np.asarray(cond)
        for method in ("naive", "cached"):
            try:
                xs = jaxar.sample(model, variables, jax.random.key(2), num_samples=2,
                                  labels=labels, cond=cond, method=method)
                rec[f"samples_{method}"] = np.asarray(xs)
            except ValueError as e:
                print(name, method, "skipped:", e)
        np.savez_compressed(f"{outdir}/{name}.npz", **rec)
        meta = {"config": path, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
        print(name, json.dumps(meta), {k: v.shape for k, v in rec.items() if not k.startswith("var:")})
        if "samples_cached" in rec:
            assert (rec["samples_cached"] == rec["samples_naive"]).all(), name

if __name__ == "__main__":
    main(sys.argv[1])
