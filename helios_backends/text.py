"""UMT5 prompt encoding, as Helios was trained: cleaned text, last hidden state, zero padding."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers and ftfy load where a prompt is first encoded, not at import
    from transformers import UMT5EncoderModel


def clean_prompt(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    def __init__(self, tokenizer, encoder: UMT5EncoderModel):
        self.tokenizer = tokenizer
        self.encoder = encoder

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, device: torch.device) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype).to(device)
        return cls(tokenizer, encoder.eval().requires_grad_(False))

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.no_grad()
    def encode(self, prompts: list[str], max_length: int) -> torch.Tensor:
        """(B, max_length, d_model): states past each prompt's real tokens are zeros, not padding states."""
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        states = self.encoder(ids, mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1)
        keep = torch.arange(max_length, device=states.device)[None, :] < lengths[:, None]
        return states * keep[..., None].to(states.dtype)
