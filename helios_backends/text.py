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

    def _tokens(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    @staticmethod
    def _zero_padding(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """States past each prompt's real tokens become zeros, as Helios was trained."""
        lengths = mask.gt(0).sum(dim=1)
        keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        return states * keep[..., None].to(states.dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str], max_length: int) -> torch.Tensor:
        """(B, max_length, d_model) on the encoder's device; zeros past each prompt's tokens."""
        ids, mask = self._tokens(prompts, max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self._zero_padding(self.encoder(ids, mask).last_hidden_state, mask)

    @torch.no_grad()
    def encode_streamed(self, prompts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
        """`encode` computed on `device` with the weights left where they live: the token
        embedding (a fifth of UMT5-XXL) is looked up there, and each block's weights visit
        `device` only while it runs, so the device never holds more than one block (layer
        offload: the whole encoder would not fit the card it is for). Same states as `encode`."""
        ids, mask = self._tokens(prompts, max_length)
        embeds = self.encoder.get_input_embeddings()(ids.to(self.device)).to(device)
        stack = self.encoder.encoder
        visits = [_Visit(block, device) for block in stack.block]
        handles = [h for v in visits for h in (v.block.register_forward_pre_hook(v.arrive), v.block.register_forward_hook(v.leave))]
        norm = _Visit(stack.final_layer_norm, device)
        norm.arrive()
        try:
            states = self.encoder(inputs_embeds=embeds, attention_mask=mask.to(device)).last_hidden_state
        finally:
            for handle in handles:
                handle.remove()
            for v in (*visits, norm):
                v.leave()
        return self._zero_padding(states, mask.to(device))


class _Visit:
    """A module's parameters and buffers on another device for a while; leaving puts back the
    very tensors it had (no copy home, no new host memory)."""

    def __init__(self, block: torch.nn.Module, device: torch.device):
        self.block, self.device = block, device
        self.home: dict[str, torch.Tensor] = {}

    def _tensors(self):
        yield from self.block.named_parameters()
        yield from self.block.named_buffers()

    def arrive(self, *_) -> None:
        if not self.home:
            for name, t in self._tensors():
                self.home[name] = t.data
                t.data = t.data.to(self.device, non_blocking=True)

    def leave(self, *_) -> None:
        if self.home:
            for name, t in self._tensors():
                t.data = self.home[name]
            self.home = {}
