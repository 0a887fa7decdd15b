"""The original authors' TensorFlow variables, mapped onto jaxar parameters.

openai/pixel-cnn (PixelCNN++) and neocxi/pixelsnail-public (PixelSNAIL) build every
layer with one of three weight-normalized functions of their `nn.py`, each creating
the variables `V`, `g`, `b` under `model/<kind>_<k>/`, where `k` counts the calls of
that kind in construction order: `conv2d` (V `[kh, kw, in, out]`, the shifted
convolutions), `deconv2d` (V `[kh, kw, out, in]`, the transposed ones) and `dense` (V
`[in, out]`, the 1x1 `nin` layers). `tf.train.ExponentialMovingAverage` adds each
variable's Polyak average as `<variable>/ExponentialMovingAverage`: the weights the
original evaluation and sampling use. Other variables (`Variable`, `Variable_<k>`: the
hand-written Adam's step counter and slots) are not the model's.

A model family lists its layers in the original's construction order (`Layer`: the
flax path of a jaxar weight-normalized layer and its kind); `load` assigns the counters,
reads each layer's three tensors, turns them into jaxar's layout and checks every shape
against the model's parameters: every model tensor of the checkpoint is used exactly
once and every jaxar parameter is set exactly once, else a one-line ValueError names the
first tensor (or parameter) that does not fit.

Layouts: a TF transposed convolution is the gradient of a convolution, so as jaxar's
dilated convolution its kernel is flipped in both spatial axes with in and out swapped
(the weight norm over TF's axes [0, 1, 3] is then jaxar's over [0, 1, 2]). The output
layer's 10 * K channels are, in the original `discretized_mix_logistic_loss`, K mixture
logits then per colour c (R, G, B) K means, K log-scales, K coefficients (c = 0: G on R,
1: B on R, 2: B on G); jaxar's dmol layout (`jaxar.distributions`) is K logits, means
[C, K], log-scales [C, K], coefficients [3, K]: `original_dmol_order` permutes them.
The original's input channel of ones (`x_pad`) is jaxar's `with_ones`, in the same place.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

EMA_SUFFIX = "/ExponentialMovingAverage"
KINDS = ("conv2d", "deconv2d", "dense")


@dataclasses.dataclass(frozen=True)
class Layer:
    """A weight-normalized layer: its flax module path (params "v", "g", "b"), the kind
    of original layer it is, and for the output layer `out_order` (jaxar's output channel
    j is the original's channel `out_order[j]`)."""

    path: tuple[str, ...]
    kind: str
    out_order: tuple[int, ...] | None = None


def original_dmol_order(num_mixtures: int) -> tuple[int, ...]:
    """For each channel of jaxar's RGB dmol parameters, the original output channel.

    Original: `[logits K | R: means K, log_scales K, coeffs K | G: ... | B: ...]`;
    jaxar: `[logits K | means (c, k) | log_scales (c, k) | coeffs (p, k)]`.
    """
    k = num_mixtures
    order = list(range(k))
    for part in range(3):  # means, log-scales, coefficients
        for c in range(3):  # colour (coefficient pair p: the same index)
            order += [k + c * 3 * k + part * k + m for m in range(k)]
    return tuple(order)


def variable_names(layers: list[Layer]) -> list[tuple[Layer, str]]:
    """Each layer with its original variable scope `model/<kind>_<k>`."""
    counters = dict.fromkeys(KINDS, 0)
    named = []
    for layer in layers:
        if layer.kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, got {layer.kind!r}")
        named.append((layer, f"model/{layer.kind}_{counters[layer.kind]}"))
        counters[layer.kind] += 1
    return named


def _to_jaxar(kind: str, name: str, value: np.ndarray, layer: Layer) -> np.ndarray:
    if name == "V" and kind == "deconv2d":
        value = np.ascontiguousarray(np.transpose(value[::-1, ::-1], (0, 1, 3, 2)))
    if layer.out_order is not None:
        order = np.asarray(layer.out_order)
        value = value[..., order] if value.shape[-1] == len(order) else value
    return value


def _node(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def check(ckpt, layers: list[Layer], abstract_params, averages: bool = True) -> list:
    """The plan of `load` from the shapes alone (nothing read): (layer, tensor, param key,
    abstract param) for every tensor, or a ValueError naming the first that does not fit."""
    where = str(ckpt.path)
    suffix = EMA_SUFFIX if averages else ""
    wanted = {n for n in ckpt.names() if n.startswith("model/")
              and n.endswith(EMA_SUFFIX) == averages}
    if not wanted:
        raise ValueError(f"{where}: no {'averaged ' if averages else ''}model variables "
                         f"(model/...{suffix}): not a checkpoint of the original code")
    plan, planned = [], set()
    for layer, scope in variable_names(layers):
        node = _node(abstract_params, layer.path)
        for name, key in (("V", "v"), ("g", "g"), ("b", "b")):
            tensor = f"{scope}/{name}{suffix}"
            if tensor not in wanted:
                raise ValueError(
                    f"{where}: tensor {tensor!r} is missing: the checkpoint holds another "
                    f"architecture than the config's (fewer layers of kind {layer.kind})")
            expected = None if node is None or key not in node else tuple(node[key].shape)
            shape = tuple(ckpt.shape(tensor))
            if name == "V" and layer.kind == "deconv2d" and len(shape) == 4:
                shape = (shape[0], shape[1], shape[3], shape[2])
            if shape != expected:
                raise ValueError(
                    f"{where}: tensor {tensor!r} of shape {list(ckpt.shape(tensor))} does not "
                    f"fit the config's layer {'/'.join(layer.path)} ({key} of shape "
                    f"{list(expected) if expected else None}): a checkpoint of another "
                    f"architecture")
            plan.append((layer, tensor, name, key, node[key]))
            planned.add((*layer.path, key))
    extra = sorted(wanted - {tensor for _, tensor, *_ in plan}, key=_natural)
    if extra:
        raise ValueError(f"{where}: tensor {extra[0]!r} is not used by the config's "
                         f"architecture: a checkpoint of another architecture "
                         f"({len(extra)} such tensors)")
    for path, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        if tuple(k.key for k in path) not in planned:
            raise ValueError(f"{where}: the config's parameter {jax.tree_util.keystr(path)} "
                             f"has no tensor in the checkpoint")
    return plan


def load(ckpt, layers: list[Layer], abstract_params, averages: bool = True) -> dict:
    """jaxar params (numpy arrays) from a `jaxar.tf_checkpoint.TFCheckpoint` of the
    original code, checked against `abstract_params` (the model's parameter shapes).

    `averages`: read the Polyak averages (`.../ExponentialMovingAverage`, what the
    original evaluates and samples with); False reads the raw parameters. A checkpoint
    of another architecture is refused (`check`) before anything is read.
    """
    params: dict = {}
    for layer, tensor, name, key, abstract in check(ckpt, layers, abstract_params, averages):
        target = params
        for part in layer.path:
            target = target.setdefault(part, {})
        value = _to_jaxar(layer.kind, name, ckpt.read(tensor), layer)
        target[key] = value.astype(abstract.dtype)
    return params


def _natural(name: str):
    """`model/conv2d_10/V` after `model/conv2d_9/V`."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in name.replace("_", "/").split("/")]
