"""Small example models bundled for ``make run``, the docs and the tests.

Each is built from plain ``torch.nn`` layers and relies on their default init, so a report on
them shows exactly what PyTorch does out of the box.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LSTMTagger",
    "TinyTransformer",
    "UNet",
]


class _DoubleConv(nn.Sequential):
    """conv → BN → ReLU twice; the convs have no bias because BatchNorm follows them."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A two-level UNet: Conv2d with and without bias, ConvTranspose2d and BatchNorm2d."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1)  # with bias: no BN right after
        self.down1 = _DoubleConv(w, 2 * w)
        self.down2 = _DoubleConv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, kernel_size=2, stride=2)
        self.dec1 = _DoubleConv(4 * w, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2)
        self.dec2 = _DoubleConv(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        d1 = self.down1(self.pool(s))
        d2 = self.down2(self.pool(d1))
        u1 = self.dec1(torch.cat([self.up1(d2), d1], dim=1))
        u2 = self.dec2(torch.cat([self.up2(u1), s], dim=1))
        return self.head(u2)  # type: ignore[no-any-return]


class TinyTransformer(nn.Module):
    """Embedding + TransformerEncoder (deep-copied layers) + LayerNorm + a tied LM head."""

    def __init__(
        self, vocab_size: int = 100, d_model: int = 32, nhead: int = 4, num_layers: int = 2
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=4 * d_model, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # weight tying, as GPT-2 does

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.encoder(self.embed(tokens))))  # type: ignore[no-any-return]


class LSTMTagger(nn.Module):
    """Embedding → 2-layer bidirectional LSTM → Linear tag scores."""

    def __init__(
        self, vocab_size: int = 50, embedding_dim: int = 16, hidden_size: int = 32, tags: int = 5
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(
            embedding_dim, hidden_size, num_layers=2, batch_first=True, bidirectional=True
        )
        self.tag = nn.Linear(2 * hidden_size, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.tag(out)  # type: ignore[no-any-return]
