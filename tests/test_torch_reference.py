"""benchmarks/torch_reference.py's PyTorch PixelCNN++ is jaxar's network: with jaxar's
parameters copied in, it gives jaxar's likelihood. Skipped without torch (not a jaxar
dependency)."""

import sys

import jax
import numpy as np
import pytest

import jaxar

torch = pytest.importorskip("torch")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from benchmarks import torch_reference as tr  # noqa: E402

SPEC = "experiments/pixelcnn_pp_cifar10.py:smoke"  # 8x8x3, 8 features, 2 resolutions


def _set(layer, p, transposed=False) -> None:
    """Copies a jaxar weight-normalized layer's v, g, b into a `tr.WNConv2d` or
    `tr.WNConvTranspose2d` (jaxar: HWIO, or IO for a dense layer; its transposed
    convolution convolves the dilated input, PyTorch's the flipped kernel)."""
    v = np.asarray(p["v"])
    v = v.T[:, :, None, None] if v.ndim == 2 else v.transpose(3, 2, 0, 1)
    if transposed:
        v = v[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    weight = layer.conv.parametrizations.weight
    with torch.no_grad():
        weight.original1.copy_(torch.tensor(v.copy()))
        weight.original0.copy_(torch.tensor(np.asarray(p["g"])).view_as(weight.original0))
        layer.conv.bias.copy_(torch.tensor(np.asarray(p["b"])))


def _copy(net, model, params) -> None:
    names = model.layer_names()
    for name in ("u_in", "ul_above", "ul_left", "out"):
        _set(getattr(net, name), params[names[name]])
    levels = [(names["up"], net.up, False), (names["down"], net.down[::-1], True)]
    for jax_levels, torch_levels, transposed in levels:
        for jax_level, torch_level in zip(jax_levels, torch_levels, strict=True):
            for stream in ("u", "ul"):
                if f"{stream}_conv" in jax_level:
                    _set(getattr(torch_level, f"{stream}_resample"),
                         params[jax_level[f"{stream}_conv"]], transposed)
                for name, resnet in zip(jax_level[f"{stream}_res"],
                                        getattr(torch_level, f"{stream}_res"), strict=True):
                    for sub in ("conv_in", "aux_in", "gate_out"):
                        if sub in params[name]:
                            _set(getattr(resnet, sub), params[name][sub])


def test_torch_pixelcnn_pp_is_jaxars_network():
    cfg, batch = tr.pp_batch_and_config(SPEC, 4)
    model = jaxar.build_model(cfg)
    m = cfg.model
    net = tr.PixelCNNPP(3, m.features, m.num_resnets, m.num_resolutions, m.num_mixtures,
                        m.dropout_rate, m.num_classes)
    params = jaxar.init_variables(model, cfg, jax.random.key(0), x=batch["x"])["params"]
    assert sum(p.numel() for p in net.parameters()) == sum(
        np.size(p) for p in jax.tree.leaves(params))
    _copy(net, model, params)
    x = torch.tensor(batch["x"]).permute(0, 3, 1, 2).float()
    net.eval()
    with torch.no_grad():
        nll = tr.dmol_nll(net(2 * x / 255 - 1), x, 256, m.num_mixtures).numpy()
    lp = jaxar.log_prob(model, {"params": params}, batch["x"])
    np.testing.assert_allclose(nll, -np.asarray(lp).reshape(4, -1).sum(-1), rtol=1e-5)
    assert 7.0 < nll.mean() / (8 * 8 * 3 * np.log(2)) < 11.0  # near uniform's 8 bits/dim


def test_data_dependent_init_normalizes_every_layer():
    cfg, batch = tr.pp_batch_and_config(SPEC, 4)
    m = cfg.model
    net = tr.PixelCNNPP(3, m.features, m.num_resnets, m.num_resolutions, m.num_mixtures,
                        m.dropout_rate, m.num_classes)
    x_unit = 2 * torch.tensor(batch["x"]).permute(0, 3, 1, 2).float() / 255 - 1
    tr.init_from_data(net, x_unit)
    outputs = {}
    hooks = [layer.register_forward_hook(lambda mod, _, y: outputs.setdefault(mod, y))
             for layer in net.modules() if isinstance(layer, tr.WNConv2d | tr.WNConvTranspose2d)]
    with torch.no_grad():
        net(x_unit)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(hooks) > 20
    for layer, y in outputs.items():
        assert float(y.mean((0, 2, 3)).abs().max()) < 1e-4
        np.testing.assert_allclose(y.std((0, 2, 3), unbiased=False).numpy(), layer.init_scale,
                                   rtol=1e-3)
