"""Modality encoders. Each maps its inputs to a (batch, out_dim) feature and is configurable in
width and depth, so that the same code gives a teacher and a small student."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class DepthwiseSeparable(nn.Sequential):
    """MobileNet block: a 3x3 depthwise conv, then a 1x1 pointwise conv, each with BN and ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1))


class ImageBranch(nn.Module):
    """MobileNet-style CNN. Channels double (up to 4x `width`) at each of the first two strided blocks."""

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, width, 3)]
        cin = width
        for i in range(depth):
            stride = 2 if i in (0, 2) else 1
            cout = width * min(4, 2 ** ((i + 1) // 2))
            layers.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image).mean(dim=(2, 3))


class AudioBranch(nn.Module):
    """CNN over a log-mel spectrogram (batch, 1, mels, frames): stages of two 3x3 convs, each stage
    halving time and frequency, channels doubling up to 8x `width`."""

    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i in range(depth):
            cout = width * min(8, 2**i)
            layers += [_conv_bn(cin, cout, 3, stride=2), _conv_bn(cout, cout, 3)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.features(audio).mean(dim=(2, 3))


class TextBranch(nn.Module):
    """Transformer encoder over token ids with learned positions (nn.Embedding, so pruning tools can
    follow the width) and an attention mask (1 = token, 0 = padding); masked mean pooling."""

    def __init__(
        self, vocab_size: int, width: int = 64, depth: int = 2, heads: int = 4, max_len: int = 64, ffn_mult: int = 4
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, width * ffn_mult, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.tokens(ids) + self.positions(pos)
        x = self.encoder(x, src_key_padding_mask=mask == 0)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.norm((x * m).sum(1) / m.sum(1).clamp(min=1.0))


class VideoBranch(nn.Module):
    """T frames through one shared 2D CNN, then a temporal convolution and mean pooling over time."""

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.frames = ImageBranch(in_channels, width, depth)
        d = self.frames.out_dim
        self.temporal = nn.Sequential(nn.Conv1d(d, d, 3, padding=1), nn.ReLU())
        self.out_dim = d

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[0], video.shape[1]
        f = self.frames(video.flatten(0, 1)).reshape(b, t, -1)
        return self.temporal(f.transpose(1, 2)).mean(dim=2)
