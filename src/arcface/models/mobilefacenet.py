"""MobileFaceNet (Chen et al., https://arxiv.org/abs/1804.07573) as one parametric builder.

The defaults reproduce insightface arcface_torch's ``backbones/mobilefacenet.py`` (``mbf``) module for
module, so its published checkpoints load with ``load_state_dict(strict=True)``. The same class,
with other arguments, expresses the other published MobileFaceNets: ``mbf_large`` (arcface_torch)
and ``mbf_tflite`` (sirius-ai's TensorFlow MobileFaceNet with BatchNorm folded into conv biases).

Layout (the indices of ``layers`` have the same role in every variant):

    layers.0  stem conv 3x3 s2, 3 -> 64*scale, PReLU
    layers.1  stage 0 at 56x56: one grouped 3x3 conv (blocks[0] == 1), optionally followed by a
              linear 1x1 (``stem_pointwise``), or a stack of blocks[0] residual bottlenecks
    layers.2  bottleneck s2, 64*scale -> 64*scale          layers.3  blocks[1] residual bottlenecks
    layers.4  bottleneck s2, 64*scale -> 128*scale         layers.5  blocks[2] residual bottlenecks
    layers.6  bottleneck s2, 128*scale -> 128*scale        layers.7  blocks[3] residual bottlenecks
    conv_sep  1x1 conv -> head_channels (512), PReLU
    features  GDC head: depthwise 7x7 (linear) -> projection(s) -> (B, num_features)

A bottleneck (``InvertedResidual``) is 1x1 expand + PReLU -> depthwise 3x3 + PReLU -> linear 1x1
project, with ``layers.{0,1,2}`` as its three conv blocks. A conv block's ``layers`` are
(conv, BN, PReLU) or (conv, BN); with ``bn=False`` the BN slot holds ``nn.Identity`` so that the
parameter names do not move (``layers.0.weight``/``layers.0.bias`` is the conv, ``layers.2.weight``
the PReLU slope) and a BN-folded checkpoint keeps the keys of its unfolded parent.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from arcface.models._blocks import Conv2dSame, Variant, downsampled_size, pair

_Int2 = int | tuple[int, int]


def _conv(
    in_c: int,
    out_c: int,
    kernel: _Int2,
    stride: int,
    padding: _Int2,
    groups: int,
    bias: bool,
    tf_same: bool,
) -> nn.Conv2d:
    # TF SAME differs from symmetric padding only for strided convs (the extra pixel goes
    # bottom/right); stride-1 odd kernels with padding k // 2 are already SAME.
    if tf_same and stride > 1:
        return Conv2dSame(in_c, out_c, kernel, stride=stride, groups=groups, bias=bias)
    return nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=bias)


class ConvBlock(nn.Module):
    """Conv -> BN (or Identity) -> PReLU: (B, in_c, H, W) -> (B, out_c, H / stride, W / stride).

    Args:
        in_c, out_c: channels.
        kernel, stride, padding, groups: as in ``nn.Conv2d`` (padding ignored for strided convs when
            ``tf_same``).
        bias: give the conv a bias (BN folded into it).
        bn: use BatchNorm2d after the conv; ``False`` puts ``nn.Identity`` in its slot.
        tf_same: TensorFlow SAME padding for strided convs.
        act: end with a per-channel PReLU; ``False`` makes this a linear block.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: _Int2 = 1,
        stride: int = 1,
        padding: _Int2 = 0,
        groups: int = 1,
        bias: bool = False,
        bn: bool = True,
        tf_same: bool = False,
        act: bool = True,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            _conv(in_c, out_c, kernel, stride, padding, groups, bias, tf_same),
            nn.BatchNorm2d(out_c) if bn else nn.Identity(),
        ]
        if act:
            mods.append(nn.PReLU(out_c))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        return self.layers(x)


class LinearBlock(ConvBlock):
    """Conv -> BN (or Identity), no activation (a ``ConvBlock`` with ``act=False``)."""

    def __init__(self, in_c: int, out_c: int, **kwargs) -> None:
        super().__init__(in_c, out_c, act=False, **kwargs)


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand + PReLU -> depthwise 3x3(stride) + PReLU -> linear 1x1.

    (B, in_c, H, W) -> (B, out_c, H / stride, W / stride), plus the input when ``residual``.

    Args:
        in_c, out_c: channels.
        inner: width of the expanded depthwise layer (arcface_torch calls it ``groups``).
        stride: stride of the depthwise conv.
        residual: add the input to the output (needs stride 1 and in_c == out_c).
        bias, bn, tf_same: see ``ConvBlock``.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        inner: int,
        stride: int = 1,
        residual: bool = False,
        bias: bool = False,
        bn: bool = True,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_c != out_c):
            raise ValueError("a residual bottleneck needs stride 1 and in_c == out_c")
        self.residual = residual
        opts = dict(bias=bias, bn=bn, tf_same=tf_same)
        self.layers = nn.Sequential(
            ConvBlock(in_c, inner, 1, **opts),
            ConvBlock(inner, inner, 3, stride=stride, padding=1, groups=inner, **opts),
            LinearBlock(inner, out_c, kernel=1, **opts),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    """``num_blocks`` residual ``InvertedResidual`` bottlenecks at constant width, under ``layers.i``."""

    def __init__(self, channels: int, num_blocks: int, inner: int, **opts) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(InvertedResidual(channels, channels, inner, 1, True, **opts) for _ in range(num_blocks))
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        return self.layers(x)


class SeparableBlock(nn.Module):
    """Depthwise-separable conv: grouped 3x3 + PReLU -> linear 1x1 (``layers.0``, ``layers.1``)."""

    def __init__(self, channels: int, groups: int, **opts) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(channels, channels, 3, padding=1, groups=groups, **opts),
            LinearBlock(channels, channels, kernel=1, **opts),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: (B, C, h, w) -> (B, num_features).

    A linear depthwise conv whose kernel covers the whole feature map (7x7 at 112 input) replaces
    global pooling, so each position gets its own learned weight; then the projection(s) to the
    embedding.

    Args:
        channels: input channels C.
        num_features: embedding size.
        kernel: (h, w) of the feature map.
        hidden: widths of extra linear projections before the embedding (sirius-ai: (512,)).
        as_conv: projections as 1x1 convs followed by a flatten (TF graphs), instead of
            flatten -> Linear [-> BatchNorm1d] (arcface_torch).
        bias, bn: see ``ConvBlock``; with ``as_conv=False`` they apply to Linear/BatchNorm1d.
        fc_bias: bias of the projections alone; None follows ``bias`` (insightface's MXNet GDC has
            bias-free convs but a biased FullyConnected).
    """

    def __init__(
        self,
        channels: int,
        num_features: int,
        kernel: tuple[int, int],
        hidden: Sequence[int] = (),
        as_conv: bool = False,
        bias: bool = False,
        bn: bool = True,
        fc_bias: bool | None = None,
    ) -> None:
        super().__init__()
        fc_bias = bias if fc_bias is None else fc_bias
        mods: list[nn.Module] = [LinearBlock(channels, channels, kernel=kernel, groups=channels, bias=bias, bn=bn)]
        widths = (*hidden, num_features)
        prev = channels
        if as_conv:
            for w in widths:
                mods.append(LinearBlock(prev, w, kernel=1, bias=fc_bias, bn=bn))
                prev = w
            mods.append(nn.Flatten(1))
        else:
            mods.append(nn.Flatten(1))
            for w in widths:
                mods += [nn.Linear(prev, w, bias=fc_bias), nn.BatchNorm1d(w) if bn else nn.Identity()]
                prev = w
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet face backbone: (B, 3, H, W) images -> (B, num_features) embeddings.

    See the module docstring for the layout. Defaults are arcface_torch's ``mbf``.

    Args:
        num_features: embedding size.
        blocks: bottlenecks per stage (stage 0 at 56x56, then three stride-2 stages); arcface_torch
            counts the stride-2 bottleneck separately, so stage i > 0 has blocks[i] residual
            bottlenecks after it.
        scale: width multiplier of the base widths 64 and 128 (arcface_torch's ``scale``).
        inner_channels: expanded width of the bottlenecks, in order (stage-0 stack, stride-2 block
            1, stack 1, stride-2 block 2, stack 2, stride-2 block 3, stack 3). Absolute, not scaled,
            as in arcface_torch.
        stem_groups: groups of the 3x3 conv of stage 0 when blocks[0] == 1 (arcface_torch: 64);
            None means depthwise (groups = channels).
        stem_pointwise: follow that 3x3 conv by a linear 1x1 conv (a depthwise-separable conv).
        head_channels: width of ``conv_sep`` and of the GDC.
        head_hidden: extra linear projection widths in the head before the embedding.
        head_as_conv: head projections as 1x1 convs (see ``GDC``).
        bias: every conv (and head Linear) has a bias; use with ``bn=False`` for BN-folded weights.
        fc_bias: bias of the head projections alone; None follows ``bias``.
        bn: BatchNorm after every conv (and in the head); ``False`` leaves ``nn.Identity`` slots.
        tf_same_padding: TensorFlow SAME padding for the stride-2 convs (extra pad bottom/right).
        input_size: input side (or (H, W)); the GDC kernel is the final feature-map size.
    """

    def __init__(
        self,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        inner_channels: Sequence[int] = (128, 128, 128, 256, 256, 512, 256),
        stem_groups: int | None = 64,
        stem_pointwise: bool = False,
        head_channels: int = 512,
        head_hidden: Sequence[int] = (),
        head_as_conv: bool = False,
        bias: bool = False,
        bn: bool = True,
        tf_same_padding: bool = False,
        input_size: int | tuple[int, int] = 112,
        fc_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(inner_channels) != 7:
            raise ValueError("MobileFaceNet needs 4 stage depths and 7 inner widths")
        self.num_features = num_features
        self.input_size = pair(input_size)
        opts = dict(bias=bias, bn=bn, tf_same=tf_same_padding)
        c1, c2 = 64 * scale, 128 * scale
        e = list(inner_channels)

        stem = ConvBlock(3, c1, 3, stride=2, padding=1, **opts)
        if blocks[0] == 1:
            groups = c1 if stem_groups is None else stem_groups
            if stem_pointwise:
                stage0: nn.Module = SeparableBlock(c1, groups, **opts)
            else:
                stage0 = ConvBlock(c1, c1, 3, padding=1, groups=groups, **opts)
        else:
            stage0 = ResidualStack(c1, blocks[0], e[0], **opts)
        self.layers = nn.ModuleList(
            [
                stem,  # (B, c1, 56, 56)
                stage0,
                InvertedResidual(c1, c1, e[1], stride=2, **opts),  # (B, c1, 28, 28)
                ResidualStack(c1, blocks[1], e[2], **opts),
                InvertedResidual(c1, c2, e[3], stride=2, **opts),  # (B, c2, 14, 14)
                ResidualStack(c2, blocks[2], e[4], **opts),
                InvertedResidual(c2, c2, e[5], stride=2, **opts),  # (B, c2, 7, 7)
                ResidualStack(c2, blocks[3], e[6], **opts),
            ]
        )
        self.conv_sep = ConvBlock(c2, head_channels, 1, **opts)  # (B, 512, 7, 7)
        kernel = downsampled_size(self.input_size, 4)
        self.features = GDC(head_channels, num_features, kernel, head_hidden, head_as_conv, bias, bn, fc_bias)
        self._init_weights()

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: Kaiming (fan_out) convs and linears, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of aligned faces.

        Args:
            x: (B, 3, H, W) float images, (H, W) = ``input_size``.

        Returns:
            (B, num_features) embeddings (not L2-normalised).
        """
        for layer in self.layers:
            x = layer(x)  # ... -> (B, 128 * scale, 7, 7)
        x = self.conv_sep(x)  # (B, 512, 7, 7)
        return self.features(x)  # (B, num_features)


_MBF_TFLITE_DOC = """\
sirius-ai's TensorFlow MobileFaceNet (as shipped in MobileFaceNet.tflite), BN folded into biases.

Contract: RGB, (x - 127.5) / 128, 112x112, NCHW here (the TFLite graph is NHWC), 192-D output
(compare by cosine of L2-normalised vectors). Not interchangeable with our own models' contract.

Architecture: MobileFaceNet(scale=1) with every conv biased and no BatchNorm (``nn.Identity``
slots), PReLU activations, TF SAME padding (stride-2 convs pad bottom/right), a depthwise-separable
stage 0 (dw 3x3 64 + PReLU, then a linear 1x1 64 -> 64), and a head dw 7x7 (linear) -> 1x1 conv
512 (linear) -> 1x1 conv 192 (linear) -> flatten.

Converter contract: the 52 ``nn.Conv2d`` modules, in ``model.modules()`` order, are the 52
CONV_2D / DEPTHWISE_CONV_2D ops of the graph in graph order. TFLite conv weights are OHWI
(permute (0, 3, 1, 2) to OIHW); depthwise weights are 1HWC (permute (3, 0, 1, 2) to (C, 1, H, W)).
The 33 ``nn.PReLU`` modules, in order, take the graph's PRELU alphas in order. Parameter names:

    layers.0.layers.0.{weight,bias}                 Conv2d_0            conv 3x3 s2, 3 -> 64
    layers.0.layers.2.weight                        Conv2d_0 PReLU
    layers.1.layers.0.layers.0.{weight,bias}        SeparableConv2d     dw 3x3, 64
    layers.1.layers.0.layers.2.weight               its PReLU
    layers.1.layers.1.layers.0.{weight,bias}        Conv                1x1 64 -> 64 (linear)
    layers.2.layers.{0,1,2}.layers.0.{weight,bias}  Conv2d_2_InvResBlock_0 expand / dw s2 / project
    layers.3.layers.{0..3}.layers.{0,1,2}...        Conv2d_2_InvResBlock_1..4 (residual)
    layers.4.layers.{0,1,2}...                      Conv2d_3_InvResBlock_0 (64 -> 128, s2)
    layers.5.layers.{0..5}.layers.{0,1,2}...        Conv2d_4_InvResBlock_0..5 (residual)
    layers.6.layers.{0,1,2}...                      Conv2d_5_InvResBlock_0 (s2)
    layers.7.layers.{0,1}.layers.{0,1,2}...         Conv2d_6_InvResBlock_0..1 (residual)
    conv_sep.layers.0.{weight,bias}, .layers.2.weight   Conv2d_7     1x1 128 -> 512, PReLU
    features.layers.0.layers.0.{weight,bias}        Logits/SeparableConv2d  dw 7x7, 512 (linear)
    features.layers.1.layers.0.{weight,bias}        Logits/Conv             1x1 512 -> 512 (linear)
    features.layers.2.layers.0.{weight,bias}        Logits/LinearConv1x1    1x1 512 -> 192 (linear)

Inside a bottleneck, ``layers.0`` / ``layers.1`` (expand / depthwise) carry a PReLU at
``.layers.2.weight``; ``layers.2`` (project) has none.
"""

VARIANTS: dict[str, Variant] = {
    "mbf": Variant(dict(), "arcface_torch's MobileFaceNet (mbf): blocks (1, 4, 6, 2), scale 2, 512-D."),
    "mbf_large": Variant(
        dict(blocks=(2, 8, 12, 4), scale=4), "arcface_torch's mbf_large: blocks (2, 8, 12, 4), scale 4."
    ),
    "mbf_mxnet": Variant(
        dict(scale=1, stem_groups=None, fc_bias=True),
        "insightface's MXNet MobileFaceNet (fmobilefacenet, GDC output; the model zoo's is 128-D): widths 64/128, "
        "a depthwise 3x3 stage 0, bias-free convs, a biased FullyConnected before the last BatchNorm. "
        "Contract RGB, (x - 127.5) / 128 (done inside the MXNet graph), 112x112.",
    ),
    "mbf_treb1en": Variant(
        dict(scale=1, stem_groups=None),
        "TreB1eN's / face.evoLVe's MobileFaceNet: widths 64/128, a depthwise 3x3 stage 0, GDC head with a "
        "bias-free Linear and BatchNorm1d. Contract RGB, (x - 127.5) / 127.5, 112x112.",
    ),
    "mbf_tflite": Variant(
        dict(
            num_features=192,
            scale=1,
            stem_groups=None,
            stem_pointwise=True,
            head_hidden=(512,),
            head_as_conv=True,
            bias=True,
            bn=False,
            tf_same_padding=True,
        ),
        _MBF_TFLITE_DOC,
    ),
}
