"""Build one of insightface's MXNet recognition networks from the oracle symbols, save it, run it.

Runs in the MXNet side venv (``.venv-mxnet``, ``make mxnet-venv``), never in the project venv; the
tests call it as a subprocess. The network code is imported at run time from the oracle folder
(``../shared/reference/oracles/insightface_mxnet``); nothing of it is copied here.

Steps: write the ``config.py`` the symbols import, build ``get_symbol()``, give it random weights
(He-scaled convs, random BatchNorm gamma/beta, PReLU slopes, biases), set every BatchNorm's moving
statistics from one training-mode pass over the faces and jitter them (so that they are realistic
but not the batch's own), save ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` with MXNet's own
``save_checkpoint``, and write the eval-mode embeddings of the faces (``fc1``) to ``--emb``.

Usage: python mxnet_build.py --oracles DIR --network fresnet|fmobilefacenet [--num-layers 50]
       [--emb-size 512] [--net-input 1] [--net-output E] [--net-unit 3] [--net-se 0]
       --faces faces.npy (N, 112, 112, 3) uint8 RGB --prefix OUT/model --emb emb.npy [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

_CONFIG = """\
class _Config(dict):
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


config = _Config(
    bn_mom={bn_mom!r}, workspace=256, emb_size={emb_size!r}, net_se={net_se!r}, net_act="prelu",
    net_unit={net_unit!r}, net_input={net_input!r}, net_blocks=[1, 4, 6, 2], net_output={net_output!r},
    net_multiplier=1.0, memonger=False, fp16=False, num_layers={num_layers!r}, per_batch_size=8,
    image_shape=(112, 112, 3),
)
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--oracles", required=True)
    p.add_argument("--network", required=True, choices=["fresnet", "fmobilefacenet"])
    p.add_argument("--num-layers", type=int, default=50)
    p.add_argument("--emb-size", type=int, default=512)
    p.add_argument("--net-input", type=int, default=1)
    p.add_argument("--net-output", default="E")
    p.add_argument("--net-unit", type=int, default=3)
    p.add_argument("--net-se", type=int, default=0)
    p.add_argument("--faces", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--emb", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import mxnet as mx
    import numpy as np

    cfg_dir = Path(tempfile.mkdtemp(prefix="mxcfg"))
    # Momentum 0 makes one training-mode pass set the moving statistics to that batch's statistics;
    # the attribute only matters for training, never for inference.
    (cfg_dir / "config.py").write_text(
        _CONFIG.format(
            bn_mom=0.0,
            emb_size=a.emb_size,
            net_se=a.net_se,
            net_unit=a.net_unit,
            net_input=a.net_input,
            net_output=a.net_output,
            num_layers=a.num_layers,
        )
    )
    sys.path[:0] = [str(cfg_dir), a.oracles]
    # fresnet.py imports sklearn without using it; the MXNet venv does not need it.
    sys.modules.setdefault("sklearn", types.ModuleType("sklearn"))
    net = __import__(a.network)
    sym = net.get_symbol()

    faces = np.load(a.faces)  # (N, 112, 112, 3) uint8 RGB
    data = faces.transpose(0, 3, 1, 2).astype(np.float32)  # (N, 3, 112, 112), 0..255 RGB
    n = len(data)
    rng = np.random.default_rng(a.seed)

    arg_shapes, _, aux_shapes = sym.infer_shape(data=data.shape)
    arg_names, aux_names = sym.list_arguments(), sym.list_auxiliary_states()
    nodes = {nd["name"]: nd for nd in __import__("json").loads(sym.tojson())["nodes"]}
    args = {}
    for name, shape in zip(arg_names, arg_shapes):
        if name == "data":
            continue
        layer = name.rsplit("_", 1)[0]
        op = nodes.get(layer, {}).get("op")
        if name.endswith("_weight") and len(shape) == 4:  # conv: He-normal over the fan-in
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("_weight"):  # FullyConnected
            value = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        elif name.endswith("_gamma") and op == "LeakyReLU":  # PReLU slope
            value = rng.uniform(0.05, 0.4, shape)
        elif name.endswith("_gamma"):  # BN scale (fix_gamma BNs must ignore it: keep it random too)
            value = rng.uniform(0.6, 1.4, shape)
        else:  # BN beta, conv / FC bias
            value = rng.normal(0.0, 0.1, shape)
        args[name] = mx.nd.array(value.astype(np.float32))
    aux = {name: mx.nd.zeros(shape) for name, shape in zip(aux_names, aux_shapes)}
    for name in aux:
        if name.endswith("_moving_var"):
            aux[name][:] = 1.0

    mod = mx.mod.Module(symbol=sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", data.shape)], for_training=True, inputs_need_grad=False)
    mod.init_params(arg_params=args, aux_params=aux, allow_missing=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=True)  # moving stats := batch stats
    mod.get_outputs()[0].wait_to_read()
    args, aux = mod.get_params()
    for name in aux:
        value = aux[name].asnumpy()
        if name.endswith("_moving_mean"):  # shift by up to ~0.2 std of the channel
            var = aux[name.replace("_moving_mean", "_moving_var")].asnumpy()
            value = value + rng.normal(0.0, 0.1, value.shape) * np.sqrt(var + 1e-3)
        else:
            value = value * rng.uniform(0.7, 1.4, value.shape)
        aux[name] = mx.nd.array(value.astype(np.float32))

    mx.model.save_checkpoint(a.prefix, 0, sym, args, aux)

    sym2, args2, aux2 = mx.model.load_checkpoint(a.prefix, 0)  # run what was saved
    run = mx.mod.Module(symbol=sym2, data_names=["data"], label_names=None, context=mx.cpu())
    run.bind(data_shapes=[("data", (n, 3, 112, 112))], for_training=False)
    run.set_params(args2, aux2)
    run.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    emb = run.get_outputs()[0].asnumpy().astype(np.float32)  # (N, emb_size)
    np.save(a.emb, emb)
    print(f"saved {a.prefix}-symbol.json / -0000.params; embeddings {emb.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
