"""IResNet ("improved" ResNet, the ArcFace backbone) as in insightface's arcface_torch.

Paper: ArcFace, Deng et al., https://arxiv.org/abs/1801.07698 (section 3.2 and the IR block of
"Improved residual networks", Duta et al.). The module tree and parameter names follow
arcface_torch's ``backbones/iresnet.py`` so that its published ``backbone.pth`` checkpoints load with
``load_state_dict(strict=True)``; r18 ... r200 are argument sets over the one ``IResNet`` class.

The same class, with options, holds the IR networks of the systems we import from (see
``arcface.inference.converters``): insightface's MXNet fresnet (LResNet-E-IR: the arcface_torch layout
itself, plus its SE units with biased convs and PReLU, its BatchNorm-on-the-input and 7x7-stem input
variants and its FC/F/G/J/H output variants) and TreB1eN's / face.evoLVe's IR and IR-SE nets (``ir50`` ...
``ir_se152``: no BatchNorm between a block's two convs, and a strided 1x1 max-pool as the shortcut of
the first stage, whose width does not change). Every option defaults to the arcface_torch layout, whose
state-dict keys stay exactly those of ``backbone.pth``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from arcface.models._blocks import SEModule, Variant, checkpoint_module, downsampled_size, pair

_BN_EPS = 1e-5
_BASE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved basic residual block (pre-activation style, no ReLU on the sum).

    Residual branch: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN [-> SE];
    shortcut: identity, or conv1x1(stride) + BN when the shape changes.
    (B, inplanes, H, W) -> (B, planes, H / stride, W / stride).

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the second 3x3 conv (and of the shortcut).
        downsample: the shortcut projection, or None for the identity.
        se_reduction: if > 0, a squeeze-and-excitation module with this reduction closes the
            residual branch (IR-SE); its parameters appear under ``se.*``.
        se_bias, se_act: the SE module's conv biases and activation (see ``SEModule``).
        mid_bn: BatchNorm between conv1 and the PReLU (``bn2``); ``False`` puts ``nn.Identity`` there
            (TreB1eN / face.evoLVe).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        se_reduction: int = 0,
        se_bias: bool = False,
        se_act: str = "relu",
        mid_bn: bool = True,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS) if mid_bn else nn.Identity()
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.se = SEModule(planes, se_reduction, se_bias, se_act) if se_reduction > 0 else None
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> this block's output; see the class docstring for shapes."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet face backbone: (B, 3, H, W) images -> (B, num_features) embeddings.

    Stem conv3x3(3, 64) + BN + PReLU at full resolution, four stages of ``IBasicBlock`` (64, 128,
    256, 512 channels, each starting with stride 2, so 112 -> 7), then the embedding head
    BN -> flatten -> dropout -> FC -> BatchNorm1d. The final BatchNorm1d's scale is fixed to 1 and
    frozen (``requires_grad=False``) as in arcface_torch, so only its shift is learned.

    Args:
        layers: number of blocks in each of the four stages, e.g. (3, 4, 14, 3) for r50.
        num_features: embedding size.
        dropout: dropout probability before the FC (arcface_torch's default 0).
        se: add squeeze-and-excitation to every block (IR-SE); adds ``layerN.i.se.*`` keys.
        se_reduction: SE channel reduction ratio.
        width_mult: multiplies the channel widths 64/128/256/512 (rounded, at least 1); values < 1
            give small CPU models. Published checkpoints need 1.0.
        input_size: input side (or (H, W)); the FC input size follows from it. 112 for published
            checkpoints.
        grad_checkpoint: in training mode, recompute each residual block's activations during
            backward instead of storing them (less memory, about one more forward of compute).
        se_bias, se_act: conv biases and activation ("relu" or "prelu") of the SE modules.
        mid_bn: BatchNorm between each block's two convs (``False``: TreB1eN / face.evoLVe).
        pool_shortcut: the first block of a stage that keeps its width (layer1) takes a strided 1x1
            max-pool as its shortcut instead of conv1x1 + BN (TreB1eN / face.evoLVe).
        input_bn: a BatchNorm2d(3) on the input before the stem (``input_bn.*``; MXNet net_input 2).
        stem_kernel, stem_stride: the stem conv (3, 1); (7, 2) is MXNet's net_input 0, whose feature
            map ends at 4x4 for a 112 input.
        pre_fc_bn: the BatchNorm2d before the flatten (``bn2``).
        post_fc_bn: the BatchNorm1d after the FC (``features``).
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_features: int = 512,
        dropout: float = 0.0,
        se: bool = False,
        se_reduction: int = 16,
        width_mult: float = 1.0,
        input_size: int | tuple[int, int] = 112,
        grad_checkpoint: bool = False,
        *,
        se_bias: bool = False,
        se_act: str = "relu",
        mid_bn: bool = True,
        pool_shortcut: bool = False,
        input_bn: bool = False,
        stem_kernel: int = 3,
        stem_stride: int = 1,
        pre_fc_bn: bool = True,
        post_fc_bn: bool = True,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2) or stem_kernel % 2 != 1:
            raise ValueError(f"stem needs an odd kernel and stride 1 or 2, got {stem_kernel} / {stem_stride}")
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got layers={tuple(layers)}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.num_features = num_features
        self.input_size = pair(input_size)
        self.grad_checkpoint = grad_checkpoint
        widths = [max(1, round(c * width_mult)) for c in _BASE_WIDTHS]
        block_opts = dict(se_reduction=se_reduction if se else 0, se_bias=se_bias, se_act=se_act, mid_bn=mid_bn)

        # None (no keys) unless asked for, so the default layout keeps arcface_torch's keys.
        self.input_bn = nn.BatchNorm2d(3, eps=_BN_EPS) if input_bn else None
        k = stem_kernel
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=k, stride=stem_stride, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        self.layer1 = self._make_layer(inplanes, widths[0], layers[0], pool_shortcut, block_opts)
        self.layer2 = self._make_layer(widths[0], widths[1], layers[1], pool_shortcut, block_opts)
        self.layer3 = self._make_layer(widths[1], widths[2], layers[2], pool_shortcut, block_opts)
        self.layer4 = self._make_layer(widths[2], widths[3], layers[3], pool_shortcut, block_opts)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=_BN_EPS) if pre_fc_bn else nn.Identity()
        self.dropout = nn.Dropout(p=dropout)
        fh, fw = downsampled_size(self.input_size, 4 + (stem_stride == 2))
        self.fc = nn.Linear(widths[3] * fh * fw, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=_BN_EPS) if post_fc_bn else nn.Identity()
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, pool_shortcut: bool, block_opts: dict) -> nn.Sequential:
        # Every stage starts with stride 2, so the first block always needs a projection shortcut
        # (arcface_torch's `stride != 1 or inplanes != planes` is then always true), unless the
        # TreB1eN layout subsamples a same-width input with a 1x1 max-pool instead.
        downsample: nn.Module
        if pool_shortcut and inplanes == planes:
            downsample = nn.MaxPool2d(kernel_size=1, stride=2)
        else:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(planes, eps=_BN_EPS),
            )
        mods = [IBasicBlock(inplanes, planes, 2, downsample, **block_opts)]
        mods += [IBasicBlock(planes, planes, 1, None, **block_opts) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: N(0, 0.1) convs, unit/zero BN, default Linear.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.features, nn.BatchNorm1d):
            nn.init.ones_(self.features.weight)
            self.features.weight.requires_grad = False

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint_module(block, x)
            return x
        return stage(x)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of aligned faces.

        Args:
            x: (B, 3, H, W) float images, (H, W) = ``input_size``.

        Returns:
            (B, num_features) embeddings (not L2-normalised).
        """
        if self.input_bn is not None:
            x = self.input_bn(x)  # (B, 3, H, W), raw pixels normalised per channel
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)  # ... -> (B, 512, 7, 7)
        x = torch.flatten(self.bn2(x), 1)  # (B, 512 * 7 * 7)
        x = self.fc(self.dropout(x))  # (B, num_features)
        return self.features(x)


VARIANTS: dict[str, Variant] = {
    "r18": Variant(dict(layers=(2, 2, 2, 2)), "IResNet-18 (arcface_torch r18)."),
    "r34": Variant(dict(layers=(3, 4, 6, 3)), "IResNet-34 (arcface_torch r34)."),
    "r50": Variant(dict(layers=(3, 4, 14, 3)), "IResNet-50 (arcface_torch r50)."),
    "r100": Variant(dict(layers=(3, 13, 30, 3)), "IResNet-100 (arcface_torch r100)."),
    "r200": Variant(dict(layers=(6, 26, 60, 6)), "IResNet-200 (arcface_torch r200)."),
}

_PT_IR = dict(mid_bn=False, pool_shortcut=True)
_PT_IR_DOC = (
    "TreB1eN's InsightFace_Pytorch / face.evoLVe {name} ({depth} layers{se}): IR blocks BN -> conv3x3 -> PReLU -> "
    "conv3x3(stride) -> BN{se_blk}, no BatchNorm between the convs, a strided 1x1 max-pool shortcut where layer1 keeps "
    "its width; head BN2d -> Dropout -> Flatten -> Linear -> BN1d. Contract RGB, (x - 127.5) / 127.5, 112x112."
)
for _depth, _layers in ((50, (3, 4, 14, 3)), (100, (3, 13, 30, 3)), (152, (3, 8, 36, 3))):
    for _se in (False, True):
        _name = f"ir{'_se' if _se else ''}{_depth}"
        VARIANTS[_name] = Variant(
            dict(layers=_layers, se=_se, **_PT_IR),
            _PT_IR_DOC.format(name=_name, depth=_depth, se=", SE" if _se else "", se_blk=" -> SE" if _se else ""),
        )
