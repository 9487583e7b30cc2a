"""The compact CNN and its checkpoints (weights-only ``torch.save`` files).

Opening any model file for scoring is :mod:`birdsound.runtime`'s job (it uses this module
for checkpoints; this module never imports it).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from .features import MelFrontEnd
from .metadata import SAMPLE_RATE_HZ, Metadata, ModelError
from .util import atomic_path, first_line

CHECKPOINT_FORMAT = "birdsound-checkpoint-1"

# (expansion channels, out channels, kernel, stride, squeeze-excite)
BLOCKS = (
    (16, 16, 3, 2, True),
    (48, 24, 3, 2, False),
    (72, 24, 3, 1, False),
    (96, 40, 5, 2, True),
    (120, 40, 5, 1, True),
    (144, 48, 5, 1, True),
    (192, 96, 5, 2, True),
    (288, 96, 5, 1, True),
)
STEM_CHANNELS = 16
EMBED_DIM = 384


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        mid = max(8, ch // 4)
        self.fc1 = nn.Conv2d(ch, mid, 1)
        self.fc2 = nn.Conv2d(mid, ch, 1)
        self.act = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise kxk, optional SE, 1x1 project."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), nn.Hardswish()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False),
                   nn.BatchNorm2d(exp), nn.Hardswish()]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Backbone(nn.Module):
    """Normalised log-mel ``[B, 1, F, T]`` -> embedding ``[B, EMBED_DIM]``."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, STEM_CHANNELS, 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(STEM_CHANNELS), nn.Hardswish()]
        cin = STEM_CHANNELS
        for exp, cout, k, s, se in BLOCKS:
            layers.append(InvertedResidual(cin, exp, cout, k, s, se))
            cin = cout
        layers += [nn.Conv2d(cin, EMBED_DIM // 2, 1, bias=False), nn.BatchNorm2d(EMBED_DIM // 2),
                   nn.Hardswish()]
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=2)  # pool frequency -> [B, C, T]
        return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)  # mean + max over time


# EfficientAT's MobileNetV3 ("mn", width 0.4: AudioSet-pretrained weights in ../shared/pretrained):
# (in, kernel, expanded, out, squeeze-excite, hard-swish, stride) of features.1 .. features.15
MN04_BLOCKS = (
    (8, 3, 8, 8, False, False, 1), (8, 3, 24, 16, False, False, 2), (16, 3, 32, 16, False, False, 1),
    (16, 5, 32, 16, True, False, 2), (16, 5, 48, 16, True, False, 1), (16, 5, 48, 16, True, False, 1),
    (16, 3, 96, 32, False, True, 2), (32, 3, 80, 32, False, True, 1), (32, 3, 72, 32, False, True, 1),
    (32, 3, 72, 32, False, True, 1), (32, 3, 192, 48, True, True, 1), (48, 3, 272, 48, True, True, 1),
    (48, 5, 272, 64, True, True, 2), (64, 5, 384, 64, True, True, 1), (64, 5, 384, 64, True, True, 1),
)
MN_BN_EPS = 0.001


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=MN_BN_EPS)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ChannelSE(nn.Module):
    """EfficientAT's squeeze-excite over channels (linear layers, ReLU, sigmoid gate)."""

    def __init__(self, ch: int):
        super().__init__()
        mid = max(8, (ch // 4 + 4) // 8 * 8)
        self.fc1 = nn.Linear(ch, mid)
        self.fc2 = nn.Linear(mid, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * s[:, :, None, None]


class _SEList(nn.Module):
    """Holds the SE as ``conc_se_layers.0`` so EfficientAT's state dict loads by name."""

    def __init__(self, ch: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([ChannelSE(ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class MNBlock(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_conv_bn_act(cin, exp, 1, act=act))
        layers.append(_conv_bn_act(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(_SEList(exp))
        layers.append(_conv_bn_act(exp, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MNBackbone(nn.Module):
    """EfficientAT's MobileNetV3 (width 0.4) up to block `depth`, then mean over frequency and
    mean + max over time: normalised log-mel ``[B, 1, F, T]`` -> ``[B, 2 * channels]``."""

    def __init__(self, depth: int = 12):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(1, 8, 3, 2, act=nn.Hardswish)]
        for cfg in MN04_BLOCKS[:depth]:
            layers.append(MNBlock(*cfg))
        self.features = nn.Sequential(*layers)
        self.out_channels = MN04_BLOCKS[depth - 1][3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=2)
        return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)


def load_pretrained(backbone: MNBackbone, path: str) -> int:
    """Load EfficientAT weights (a plain state dict) into `backbone`'s blocks; returns tensors loaded."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = backbone.state_dict()
    take = {k: v for k, v in state.items() if k in own}
    bad = [k for k, v in take.items() if v.shape != own[k].shape]
    if bad or not take:
        raise ModelError(f"{path}: not EfficientAT mn04 weights ({bad[:2] or 'no matching tensors'})")
    missing = [k for k in own if k not in take and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelError(f"{path}: lacks {missing[:2]}")
    backbone.load_state_dict(take, strict=False)
    return len(take)


class EnsembleBackbone(nn.Module):
    """Several backbones side by side on the same input: their embeddings concatenated. With a head whose
    weights are the members' heads side by side, each divided by their number, the logits are the mean of
    the members' logits (:func:`average`)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for m in self.members:
            out.append(m(x))
        return torch.cat(out, dim=1)


def ensemble_config(members: list[dict]) -> dict:
    """The ``backbone`` metadata of an :class:`EnsembleBackbone` of backbones of configs `members`."""
    return {"type": "ensemble", "members": list(members)}


def make_backbone(config: dict | None) -> nn.Module:
    """The backbone a model's metadata names (``backbone``: {"type": "mn", "depth": 12}, or {"type": "ensemble",
    "members": [config, ...]}); v1 models have none."""
    config = config or {}
    if config.get("type") == "mn":
        return MNBackbone(int(config.get("depth", 12)))
    if config.get("type") == "ensemble":
        return EnsembleBackbone([make_backbone(c) for c in config["members"]])
    return Backbone()


def embed_dim(backbone: nn.Module) -> int:
    if isinstance(backbone, EnsembleBackbone):
        return sum(embed_dim(m) for m in backbone.members)
    return 2 * backbone.out_channels if isinstance(backbone, MNBackbone) else EMBED_DIM


class BirdNetLite(nn.Module):
    """Raw PCM ``float32 [B, window_samples]`` -> per-species logits ``[B, n_labels]``."""

    def __init__(self, n_labels: int, sample_rate: int = SAMPLE_RATE_HZ, dropout: float = 0.2,
                 frontend: dict | None = None, backbone: dict | None = None):
        super().__init__()
        self.frontend = MelFrontEnd(sample_rate, **frontend_kwargs(frontend or {}))
        self.backbone = make_backbone(backbone)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim(self.backbone), n_labels)

    def forward_mel(self, power_mel: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed mel power ``[B, F, T]`` (training path)."""
        return self.head(self.dropout(self.backbone(self.frontend.normalize(power_mel))))

    def embed(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.frontend(pcm))

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(pcm)))


def average(nets: list[BirdNetLite], backbones: list[dict | None]) -> BirdNetLite:
    """One model whose logits are the mean of the logits of `nets` (same labels, sample rate and front end;
    `backbones`: each net's ``backbone`` metadata). Its backbone is their backbones side by side
    (:class:`EnsembleBackbone`, metadata :func:`ensemble_config`), its head theirs. Front ends may differ in
    ``scale`` alone (a pretrained net's input range): the ensemble's is the first net's, and another's ratio to
    it is folded into that net's first convolution, which is exact (bias-free, zero-padded, applied first)."""
    first = nets[0]
    config = first.frontend.config()
    key = lambda net: ({k: v for k, v in net.frontend.config().items() if k != "scale"},  # noqa: E731
                       int(net.frontend.mel.sample_rate), net.head.out_features)
    for net in nets[1:]:
        if key(net) != key(first):
            raise ModelError(f"models to average differ in front end, sample rate or labels: {key(net)} / {key(first)}")
    out = BirdNetLite(first.head.out_features, int(first.frontend.mel.sample_rate), frontend=config,
                      backbone=ensemble_config(backbones))
    out.frontend.load_state_dict(first.frontend.state_dict())
    with torch.no_grad():
        for mine, net in zip(out.backbone.members, nets):
            mine.load_state_dict(net.backbone.state_dict())
            if net.frontend.scale != first.frontend.scale:
                stem(mine).weight.mul_(net.frontend.scale / first.frontend.scale)
        out.head.weight.copy_(torch.cat([net.head.weight for net in nets], dim=1) / len(nets))
        out.head.bias.copy_(torch.stack([net.head.bias for net in nets]).mean(dim=0))
    return out.eval()


def stem(backbone: nn.Module) -> nn.Conv2d:
    """A backbone's first convolution, the first operation on its input (not an ensemble's: one per member)."""
    if isinstance(backbone, EnsembleBackbone):
        raise ModelError("an ensemble member that is itself an ensemble cannot take another input scale")
    conv = backbone.features[0]
    conv = conv[0] if isinstance(conv, nn.Sequential) else conv
    if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.padding_mode != "zeros":
        raise ModelError(f"{type(backbone).__name__}: its input scale cannot be folded into its first layer")
    return conv


def frontend_kwargs(config: dict) -> dict:
    """MelFrontEnd arguments from the ``frontend`` entry of a model's metadata (missing: defaults)."""
    names = {"n_mels": "n_mels", "n_fft": "n_fft", "hop": "hop", "fmin_hz": "fmin", "fmax_hz": "fmax", "scale": "scale"}
    return {arg: config[key] for key, arg in names.items() if key in config}


class ProbabilityModel(nn.Module):
    """Wraps a logit model so forward returns sigmoid probabilities (the exported signature)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(pcm))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_mflops(net: BirdNetLite, window_samples: int) -> float:
    """Multiply-accumulates x2 of convolutions and linear layers for one window, in MFLOPs
    (the mel front end's FFT is counted separately as 5 N log2 N per frame)."""
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += 2.0 * out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += 2.0 * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, window_samples))
    net.train(was_training)
    for h in hooks:
        h.remove()
    mel = net.frontend.mel
    frames = 1 + (window_samples - mel.n_fft) // mel.hop_length
    fft = frames * 5.0 * mel.n_fft * np.log2(mel.n_fft)
    melmul = frames * 2.0 * mel.n_mels * (mel.n_fft // 2 + 1)
    return (total + fft + melmul) / 1e6


def save_checkpoint(net: BirdNetLite, meta: Metadata, path: str) -> None:
    """Write a weights-only checkpoint atomically (temporary name, then rename)."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    blob = {"format": CHECKPOINT_FORMAT, "metadata": json.dumps(meta.to_dict()), "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: str) -> tuple[BirdNetLite, Metadata]:
    """Load a birdsound checkpoint with ``weights_only=True``; returns (eval model, metadata)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of every kind
        raise ModelError(f"{path}: not a birdsound model file ({first_line(e)})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a birdsound model file (no '{CHECKPOINT_FORMAT}' marker)")
    try:
        meta = Metadata.from_dict(json.loads(blob["metadata"]))
        net = BirdNetLite(len(meta.labels), meta.sample_rate, frontend=meta.extra.get("frontend"),
                          backbone=meta.extra.get("backbone"))
        net.load_state_dict(blob["state_dict"])
    except Exception as e:
        raise ModelError(f"{path}: damaged birdsound model file ({first_line(e)})") from None
    net.eval()
    return net, meta


