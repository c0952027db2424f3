"""The prompt tokenizer of a folder's `tokenizer/`: token ids and attention mask, padded and
truncated to a fixed length, as transformers' T5Tokenizer gives them, read by the `tokenizers`
library alone (importing transformers costs a fresh process seconds; see umt5.py).

transformers (5.x) does not run a T5 tokenizer.json as written: T5Tokenizer rebuilds the pipeline
around the file's Unigram vocabulary. Its normalizer is only the file's precompiled SentencePiece
charsmap (none when the file has none, whatever else the file's normalizer does), words are split
on whitespace before the Metaspace pre-tokenizer, and "</s>" ends every text, kept by truncation
(the text is cut to max_length - 1 tokens first). `T5PromptTokenizer` builds that pipeline; a
folder it cannot reproduce exactly falls back to transformers (`TransformersTokenizer`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch

T5_CLASSES = ("T5Tokenizer", "T5TokenizerFast")
EOS, PAD, UNK = "</s>", "<pad>", "<unk>"
T5_UNK_ID = 2  # T5Tokenizer rebuilds its Unigram model with unk_id 2 and no byte fallback


class T5PromptTokenizer:
    def __init__(self, backend, pad_token: str):
        self.backend = backend  # a tokenizers.Tokenizer
        self.pad_token, self.pad_id = pad_token, backend.token_to_id(pad_token)

    @classmethod
    def load(cls, directory: Path) -> "T5PromptTokenizer | TransformersTokenizer":
        """Ours when the folder has a tokenizer.json whose pipeline we reproduce; else transformers'."""
        directory = Path(directory)
        file = directory / "tokenizer.json"
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if not file.is_file():
            # Only a SentencePiece model (spiece.model): transformers converts it to a tokenizers
            # pipeline itself, a conversion (and a sentencepiece dependency) not reproduced here.
            return TransformersTokenizer.load(directory)
        text = file.read_text(encoding="utf-8")
        tokenizer_json = json.loads(text)
        if _unsupported(config, tokenizer_json):
            return TransformersTokenizer.load(directory)  # transformers reads what this module does not
        return cls(_t5_pipeline(text, tokenizer_json), _content(config.get("pad_token", PAD)))

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (len(texts), max_length) int64: "</s>" after each text's tokens (the
        text cut to fit), then padding, mask 1 on the text's tokens and the "</s>"."""
        self.backend.enable_truncation(max_length)
        self.backend.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self.pad_token)
        encodings = self.backend.encode_batch(texts, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids.view(len(texts), max_length), mask.view(len(texts), max_length)


class TransformersTokenizer:
    """transformers' tokenizer behind the same call, for folders T5PromptTokenizer does not read."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, directory: Path) -> "TransformersTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(directory))

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return tokens.input_ids, tokens.attention_mask


def _content(token) -> str:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    return token["content"] if isinstance(token, dict) else str(token)


def _special_tokens(config: dict) -> set[str]:
    """The special tokens T5Tokenizer adds when missing: pad, eos, unk, the additional ones, and
    `extra_ids` sentinels <extra_id_N> unless the additional ones already name sentinels."""
    named = {_content(config.get(key, default)) for key, default in (("pad_token", PAD), ("eos_token", EOS), ("unk_token", UNK))}
    additional = [_content(t) for key in ("additional_special_tokens", "extra_special_tokens") for t in config.get(key) or []]
    if not any("<extra_id_" in t for t in additional):
        additional += [f"<extra_id_{i}>" for i in range(config.get("extra_ids", 100))]
    return named | set(additional)


def _unsupported(config: dict, tokenizer_json: dict) -> bool:
    """Whether transformers would build a pipeline other than the one _t5_pipeline builds."""
    model = tokenizer_json.get("model") or {}
    added = {token["content"] for token in tokenizer_json.get("added_tokens") or []}
    return (
        config.get("tokenizer_class", "T5Tokenizer") not in T5_CLASSES
        or model.get("type") != "Unigram"
        or model.get("unk_id") != T5_UNK_ID
        or model.get("byte_fallback", False)
        or _content(config.get("eos_token", EOS)) != EOS  # the appended "</s>" is T5Tokenizer's literal
        or config.get("split_special_tokens", False)
        or not _special_tokens(config) <= added  # transformers would add a token the file lacks
    )


def _precompiled_charsmap(tokenizer_json: dict) -> bytes | None:
    normalizer = tokenizer_json.get("normalizer") or {}
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part.get("type") == "Precompiled" and "precompiled_charsmap" in part:
            return base64.b64decode(part["precompiled_charsmap"])
    return None


def _t5_pipeline(text: str, tokenizer_json: dict):
    """The file's vocabulary and added tokens in the pipeline T5Tokenizer builds around them."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors

    backend = Tokenizer.from_str(text)
    charsmap = _precompiled_charsmap(tokenizer_json)
    backend.normalizer = normalizers.Precompiled(charsmap) if charsmap is not None else None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, backend.token_to_id(EOS))]
    )
    backend.encode_special_tokens = False
    return backend
