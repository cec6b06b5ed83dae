"""LRE, the Layer Recognition Embeddings: one learned token per binary layer."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LayerEmbeddings"]


class LayerEmbeddings(nn.Module):
    """A learned ``d_model``-dim token per binary layer, the first token of that layer's sequences.

    It tells the shared slow net which layer a gradient history comes from.
    """

    def __init__(self, num_layers: int, d_model: int = 1) -> None:
        super().__init__()
        self.table = nn.Embedding(num_layers, d_model)

    def forward(self) -> Tensor:
        """All layers' tokens, (num_layers, d_model)."""
        return self.table.weight
