"""UMT5 prompt encoding, as Helios was trained: cleaned text, last hidden state, zero padding."""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from .loading import load_text_encoder
from .tokenizer import T5PromptTokenizer, TransformersTokenizer
from .umt5 import UMT5Encoder


def clean_prompt(text: str) -> str:
    import ftfy  # loads where a prompt is first encoded, not at import

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    def __init__(self, tokenizer: T5PromptTokenizer | TransformersTokenizer, encoder: UMT5Encoder):
        self.tokenizer = tokenizer
        self.encoder = encoder

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, device: torch.device) -> "TextEncoder":
        folder = Path(folder)
        return cls(T5PromptTokenizer.load(folder / "tokenizer"), load_text_encoder(folder, dtype, device))

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def _tokens(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer([clean_prompt(p) for p in prompts], max_length)

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
        return self._zero_padding(self.encoder(ids, mask), mask)

    @torch.no_grad()
    def encode_streamed(self, prompts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
        """`encode` computed on `device` with the weights left where they live: the token
        embedding (a fifth of UMT5-XXL) is looked up there, and each block's weights visit
        `device` only while it runs, so the device never holds more than one block (layer
        offload: the whole encoder would not fit the card it is for). Same states as `encode`."""
        ids, mask = self._tokens(prompts, max_length)
        embeds = self.encoder.shared(ids.to(self.device)).to(device)
        stack = self.encoder.encoder
        visits = [_Visit(block, device) for block in stack.block]
        handles = [h for v in visits for h in (v.block.register_forward_pre_hook(v.arrive), v.block.register_forward_hook(v.leave))]
        norm = _Visit(stack.final_layer_norm, device)
        norm.arrive()
        try:
            states = stack(embeds, mask.to(device).bool())
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
