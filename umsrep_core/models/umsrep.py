"""The UMS-Rep network: one U-Net style encoder whose features feed every task head.

Compute sits in the encoder (two 3x3 convolutions per level, channels doubling per level); the
decoders are light feature-pyramid paths (a 1x1 lateral from each skip, upsample-and-add, one
3x3 convolution per level, none at full resolution, the same few channels at every level).
That is what lets one shared encoder with three heads cost about a third of three separate
models: the part that is shared is the part that costs. With `unshuffle` 2 (the real-data
cxr bundle) each 2x2 of input pixels enters as one cell of four channels and every level runs
at half resolution: at 256 px the full-resolution activations, not the weights, set the peak
of memory, and they are what it saves. The denoising head predicts a residual
on its input; the segmentation head gives one logit per label (multi-label: labels may
overlap); the classification head pools the bottleneck."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "HEADS",
    "STRATEGIES",
    "ClassHead",
    "Encoder",
    "ModelConfig",
    "SingleTask",
    "StackedDecoders",
    "UMSRep",
    "UNetDecoder",
    "count_parameters",
    "for_inference",
    "set_trainable",
]

HEADS = ("denoise", "segment", "classify")
STRATEGIES = ("frozen", "partial", "full")
Features = tuple[list[Tensor], Tensor]  # skip features (full resolution first), bottleneck


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 1
    width: int = 20  # encoder channels at full resolution, doubled at each level
    depth: int = 4  # downsampling steps: the bottleneck is input_size / 2**depth
    n_seg: int = 3  # segmentation labels
    n_classes: int = 2
    input_size: int = 256
    dec_width: int = 16  # decoder channels, at every level
    norm: Literal["batch", "group"] = "batch"
    hidden: int = 64  # the classification MLP's hidden units
    class_levels: int = 2  # encoder levels the classifier pools, the bottleneck and up
    dropout: float = 0.2  # before the classifier's last layer
    # Standardise each input image (zero mean, unit deviation) before the encoder, and give
    # the denoised image back in the input's units: real radiographs come from many detectors
    # and display chains, whose brightness and contrast differ by more than training sees.
    standardise: bool = False
    # Pixels folded into channels before the encoder (F.pixel_unshuffle by this factor) and
    # unfolded from the decoders' outputs: 2 runs every level at half the input's resolution
    # for a quarter of the activation memory and arithmetic, the outputs still at full
    # resolution (each half-resolution cell predicts its 2x2 pixels).
    unshuffle: int = 1

    @property
    def stride(self) -> int:
        """What the input's height and width must be multiples of."""
        return int(self.unshuffle * 2**self.depth)  # int: mypy types int ** int as Any

    def __post_init__(self) -> None:
        if min(self.in_channels, self.width, self.depth, self.n_seg, self.n_classes,
               self.dec_width, self.hidden, self.unshuffle) < 1:
            raise ValueError(f"every size of {self} must be positive")
        if self.input_size % self.stride:
            raise ValueError(f"input_size {self.input_size} is not a multiple of "
                             f"unshuffle * 2**depth = {self.stride}")
        if not 1 <= self.class_levels <= self.depth + 1:
            raise ValueError(f"class_levels {self.class_levels}: 1 to depth + 1 = "
                             f"{self.depth + 1}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm {self.norm!r} is not 'batch' or 'group'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model_config keys: {sorted(unknown)}")
        return cls(**data)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, norm: str, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         _norm(norm, cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """depth + 1 blocks of two 3x3 conv-norm-ReLU; a 2x2 max-pool before every block but the
    first. Returns the first depth blocks' outputs (the skips) and the last (the bottleneck)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.channels = [config.width * 2**i for i in range(config.depth + 1)]
        cins = [config.in_channels * config.unshuffle**2, *self.channels[:-1]]
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, config.norm), _conv(cout, cout, config.norm))
            for cin, cout in zip(cins, self.channels, strict=True))

    def forward(self, x: Tensor) -> Features:
        skips: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(F.max_pool2d(x, 2) if index else x)
            skips.append(x)
        return skips[:-1], skips[-1]


class UNetDecoder(nn.Module):
    """A feature pyramid's top-down path over the encoder's skips, to `out_channels` maps at
    input resolution.

    Every level works on `dec_width` channels. Below full resolution: upsample, add a 1x1
    lateral of the skip, one 3x3 conv. The full-resolution level is linear (a 1x1 of the first
    skip plus the upsampled half-resolution prediction): it is the costliest level per
    channel, and the encoder's first block already holds the full-resolution detail.
    """

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__()
        enc = [config.width * 2**i for i in range(config.depth + 1)]
        width = config.dec_width
        inner = range(1, config.depth)  # the levels between full resolution and the bottleneck
        self.top = _conv(enc[-1], width, config.norm, kernel=1)
        self.lateral = nn.ModuleList(_conv(enc[i], width, config.norm, kernel=1) for i in inner)
        self.smooth = nn.ModuleList(_conv(width, width, config.norm) for _ in inner)
        self.out_channels, self.unshuffle = out_channels, config.unshuffle
        cells = out_channels * config.unshuffle**2  # each output pixel of a first-level cell
        self.coarse = nn.Conv2d(width, cells, 1)
        self.fine = nn.Conv2d(enc[0], cells, 1, bias=False)

    def forward(self, features: Features) -> Tensor:
        skips, x = features
        x = self.top(x)
        for i in range(len(skips) - 2, -1, -1):  # i = level - 1
            skip = skips[i + 1]
            # Nearest is enough where a 3x3 conv follows, and cheaper than bilinear.
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = self.smooth[i](x + self.lateral[i](skip))
        out: Tensor = self.fine(skips[0])
        # In place: one first-level tensor fewer at the peak of activation memory.
        out += F.interpolate(self.coarse(x), size=skips[0].shape[-2:], mode="bilinear",
                             align_corners=False)
        return F.pixel_shuffle(out, self.unshuffle) if self.unshuffle > 1 else out


class ClassHead(nn.Module):
    """Global average and max pooling of the bottleneck (and of the `class_levels - 1` encoder
    levels above it), then a small MLP. Max pooling keeps a small finding (a nodule) from being
    averaged away; a finer level keeps it from being smaller than the bottleneck's cells."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.levels = config.class_levels
        channels = sum(config.width * 2**i
                       for i in range(config.depth + 1 - self.levels, config.depth + 1))
        self.mlp = nn.Sequential(nn.Linear(2 * channels, config.hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(config.dropout), nn.Linear(config.hidden,
                                                                       config.n_classes))

    def forward(self, features: Features) -> Tensor:
        skips, bottleneck = features
        maps = [*skips[len(skips) + 1 - self.levels:], bottleneck]
        pooled = torch.cat([t for m in maps for t in (m.mean(dim=(2, 3)), m.amax(dim=(2, 3)))],
                           dim=1)
        logits: Tensor = self.mlp(pooled)
        return logits


class StackedDecoders(nn.Module):
    """Decoders that read the same features, run as one decoder of the same shape: the 1x1s
    of a shared input become one convolution with the decoders' outputs concatenated, the
    layers on each decoder's own channels one grouped convolution. Same weights, same outputs,
    one operator where there were one per head: at batch 1 on a CPU a decoder's small
    operators cost more in call overhead and memory traffic than in arithmetic. Built by
    `for_inference` from decoders whose batch norms are folded."""

    def __init__(self, decoders: Mapping[str, UNetDecoder]) -> None:
        super().__init__()
        self.heads = tuple(decoders)
        parts = list(decoders.values())
        self.out_channels = [d.out_channels for d in parts]
        self.path = path = copy.deepcopy(parts[0])
        with torch.no_grad():
            path.top = _restacked([d.top for d in parts], own_inputs=False)
            for i in range(len(path.lateral)):
                path.lateral[i] = _restacked([d.lateral[i] for d in parts], own_inputs=False)
                path.smooth[i] = _restacked([d.smooth[i] for d in parts], own_inputs=True)
            path.coarse = _stacked([d.coarse for d in parts], own_inputs=True)
            path.fine = _stacked([d.fine for d in parts], own_inputs=False)

    def forward(self, features: Features) -> list[Tensor]:
        out: Tensor = self.path(features)
        return list(out.split(self.out_channels, dim=1))


def _conv_of(layer: nn.Module) -> nn.Conv2d:
    """A decoder layer's convolution: the layer, or the first of its conv-norm-ReLU."""
    conv = layer[0] if isinstance(layer, nn.Sequential) else layer
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"not a convolution layer: {layer}")
    return conv


def _restacked(layers: Sequence[nn.Module], *, own_inputs: bool) -> nn.Sequential:
    """Conv-norm-ReLU layers as one: their convolutions stacked, the rest (the folded norm's
    identity, the ReLU) kept."""
    first = layers[0]
    if not isinstance(first, nn.Sequential):
        raise TypeError(f"not a conv-norm-ReLU layer: {first}")
    return nn.Sequential(_stacked(layers, own_inputs=own_inputs), *list(first)[1:])


def _stacked(layers: Sequence[nn.Module], *, own_inputs: bool) -> nn.Conv2d:
    """One convolution doing the work of the layers' convolutions, their outputs
    concatenated: all on the same input, or each on its own slice of the input, in order: a
    grouped convolution where they have as many outputs each, else one with block-diagonal
    weights."""
    convs = [_conv_of(layer) for layer in layers]
    first, n = convs[0], len(convs)
    groups = n if own_inputs and len({c.out_channels for c in convs}) == 1 else 1
    cin = first.in_channels * (n if own_inputs else 1)
    weight = first.weight.new_zeros(sum(c.out_channels for c in convs), cin // groups,
                                    *first.weight.shape[2:])
    bias = first.weight.new_zeros(weight.shape[0])
    row = 0
    for k, c in enumerate(convs):
        col = k * c.in_channels if own_inputs and groups == 1 else 0
        weight[row:row + c.out_channels, col:col + c.in_channels] = c.weight
        if c.bias is not None:
            bias[row:row + c.out_channels] = c.bias
        row += c.out_channels
    kernel = first.kernel_size[0]
    conv = nn.Conv2d(cin, weight.shape[0], kernel, padding=kernel // 2, groups=groups)
    conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
    return conv


class UMSRep(nn.Module):
    """One encoder, and the heads named in `heads` (default: all of HEADS)."""

    def __init__(self, config: ModelConfig | None = None, heads: Sequence[str] = HEADS) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        unknown = [h for h in heads if h not in HEADS]
        if unknown or not heads:
            raise ValueError(f"heads {list(heads)}: choose one or more of {HEADS}")
        self.encoder = Encoder(self.config)
        builders = {"denoise": lambda: UNetDecoder(self.config, self.config.in_channels),
                    "segment": lambda: UNetDecoder(self.config, self.config.n_seg),
                    "classify": lambda: ClassHead(self.config)}
        self.heads = nn.ModuleDict({h: builders[h]() for h in HEADS if h in heads})
        self.stacked: StackedDecoders | None = None  # set by for_inference

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, x: Tensor, heads: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Every requested head's output (default: all this model has), from ONE encoder pass.

        denoise: the clean image, (N, in_channels, H, W); segment: logits (N, n_seg, H, W);
        classify: logits (N, n_classes).
        """
        wanted = self.tasks if heads is None else tuple(heads)
        missing = [h for h in wanted if h not in self.heads]
        if missing:
            raise ValueError(f"this model has heads {self.tasks}, not {missing}")
        step = self.config.stride
        if x.ndim != 4 or x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"input {tuple(x.shape)}: expected (N, C, H, W), H and W "
                             f"multiples of {step}")
        scale: Tensor | None = None
        encoded = x
        if self.config.standardise:
            # a blank image has no deviation to divide by: it stays flat, not amplified noise
            scale = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-2)
            encoded = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / scale
        if self.config.unshuffle > 1:
            encoded = F.pixel_unshuffle(encoded, self.config.unshuffle)
        features = self.encoder(encoded)
        stacked = self.stacked
        done = (dict(zip(stacked.heads, stacked(features), strict=True))
                if stacked is not None and set(stacked.heads) <= set(wanted) else {})
        out = {h: done[h] if h in done else self.heads[h](features) for h in wanted}
        if "denoise" in out:
            out["denoise"] = x + (out["denoise"] if scale is None else out["denoise"] * scale)
        return out

    def train(self, mode: bool = True) -> Self:
        """As nn.Module.train, but batch norms whose parameters are all frozen stay in eval
        mode: a frozen encoder must keep its running statistics as well as its weights."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=False))
                if isinstance(module, nn.BatchNorm2d) and params and not any(
                        p.requires_grad for p in params):
                    module.eval()
        return self


class SingleTask(UMSRep):
    """The same architecture with a single head: the paper's separate-model baseline."""

    def __init__(self, config: ModelConfig | None = None, head: str = "segment") -> None:
        super().__init__(config, heads=(head,))


def set_trainable(model: UMSRep, strategy: str, n_blocks: int = 2) -> None:
    """Choose what fine-tuning updates. Heads are always trainable; the encoder is
    "frozen" (nothing), "partial" (its last `n_blocks` blocks, the bottleneck counting as
    one) or "full" (everything). Call model.train() after it to settle batch norm modes."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: choose one of {STRATEGIES}")
    blocks = list(model.encoder.blocks)
    if strategy == "partial" and not 1 <= n_blocks <= len(blocks):
        raise ValueError(f"n_blocks {n_blocks}: the encoder has {len(blocks)} blocks")
    trainable = {"frozen": 0, "partial": n_blocks, "full": len(blocks)}[strategy]
    for index, block in enumerate(blocks):
        block.requires_grad_(index >= len(blocks) - trainable)
    model.heads.requires_grad_(True)


def for_inference(model: UMSRep, device: torch.device | str = "cpu") -> UMSRep:
    """A copy of `model` to serve: eval mode, each batch norm folded into the convolution
    before it, the decoders stacked into one (StackedDecoders: asked together, they run
    together), channels-last memory. Same outputs (to float rounding), fewer and faster
    operators: on a CPU at batch 1 a small convolution costs more in memory traffic and call
    overhead than in arithmetic, and these save both."""
    served = copy.deepcopy(model).eval()
    for module in served.modules():
        if isinstance(module, nn.Sequential) and len(module) > 1 and isinstance(
                module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    decoders = {h: m for h, m in served.heads.items() if isinstance(m, UNetDecoder)}
    if len(decoders) > 1 and served.config.norm == "batch":  # group norms do not fold
        served.stacked = StackedDecoders(decoders)
    served.to(device)
    served.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # untyped
    return served


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
