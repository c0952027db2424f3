"""Our UMT5 encoder and T5 prompt tokenizer against transformers' (the oracle): the same token ids
and mask, the same last hidden state, the same TextEncoder states as when it ran transformers'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helios_backends.config import TextEncoderConfig
from helios_backends.errors import CheckpointError
from helios_backends.loading import load_text_encoder
from helios_backends.text import TextEncoder, clean_prompt
from helios_backends.tiny import TINY_TEXT, build_tokenizer
from helios_backends.tokenizer import T5PromptTokenizer, TransformersTokenizer
from helios_backends.umt5 import UMT5Encoder

PROMPTS = [
    "a fox",
    "",
    " ",
    "\t\n",
    "   lots   of\tspace\n\nhere  ",
    "A red fox trots through fresh snow at dawn, its breath steaming.",
    "Ünïcödé ﬁ Ｆｕｌｌｗｉｄｔｈ 東京 🦊 naïve café",
    "x" * 300,
    "a red fox running " * 40,
    "literal specials </s> <pad> <unk> <extra_id_3> inside",
    "</s>",
    "it's 12:30 -- ok?!",
]
LENGTHS = [1, 2, 7, 24, 64, 512]
# several layers and heads, 32 buckets over max_distance 20: positions 40 apart use the far (log) buckets
WIDE_TEXT = dict(vocab_size=300, d_model=64, d_kv=16, d_ff=96, num_layers=5, num_heads=6, relative_attention_num_buckets=32,
                 relative_attention_max_distance=20)


def transformers_tokens(tokenizer, prompts: list[str], max_length: int):
    """What TextEncoder._tokens asked of transformers before it had its own tokenizer."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                       return_attention_mask=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def assert_same_tokens(folder: Path) -> None:
    from transformers import AutoTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(folder), T5PromptTokenizer.load(folder)
    assert isinstance(ours, T5PromptTokenizer)
    for max_length in LENGTHS:
        want_ids, want_mask = transformers_tokens(theirs, PROMPTS, max_length)
        ids, mask = ours(PROMPTS, max_length)
        assert torch.equal(ids, want_ids), max_length
        assert torch.equal(mask, want_mask), max_length
        assert ids.dtype == want_ids.dtype and mask.dtype == want_mask.dtype


def test_the_tokenizer_gives_transformers_ids_and_mask_on_the_tiny_tokenizer(tmp_path):
    """Its tokenizer.json has an NFKC normalizer that transformers' T5Tokenizer drops (full-width
    letters and ligatures above tell), and a Metaspace without the whitespace split it adds."""
    build_tokenizer(TINY_TEXT["vocab_size"]).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["normalizer"]["type"] == "NFKC"
    assert_same_tokens(tmp_path)


def _precompiled_charsmap(spm_model: bytes) -> bytes:
    """normalizer_spec.precompiled_charsmap (field 3, then 2) of a SentencePiece ModelProto, read
    from the protobuf wire format (the protobuf package is not a dependency)."""

    def fields(data: bytes):
        i = 0
        while i < len(data):
            key, i = _varint(data, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(data, i)
                continue
            if wire == 2:
                size, i = _varint(data, i)
                yield number, data[i : i + size]
                i += size
                continue
            i += {1: 8, 5: 4}[wire]

    spec = next(value for number, value in fields(spm_model) if number == 3)
    return next(value for number, value in fields(spec) if number == 2)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def test_the_tokenizer_gives_transformers_ids_and_mask_with_a_sentencepiece_charsmap_and_sentinels(tmp_path):
    """The released UMT5 tokenizer's layout: a SentencePiece Unigram model whose tokenizer.json
    normalizer holds a precompiled NFKC charsmap (inside a Sequence, which transformers keeps only
    the charsmap of), and <extra_id_N> sentinels among the added tokens."""
    import sentencepiece
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PROMPTS[4:8] + ["the quick brown fox jumps over the lazy dog", "a lake at dawn, snow"]) * 20)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=120, hard_vocab_limit=False, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, normalization_rule_name="nmt_nfkc", minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    charsmap = _precompiled_charsmap((tmp_path / "spiece.model").read_bytes())
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace("o", "0")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    folder = tmp_path / "tokenizer"
    T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=5).save_pretrained(folder)
    saved = json.loads((folder / "tokenizer.json").read_text())
    assert saved["normalizer"]["type"] == "Sequence" and "<extra_id_3>" in {t["content"] for t in saved["added_tokens"]}
    assert_same_tokens(folder)


def test_a_tokenizer_folder_it_cannot_reproduce_is_read_by_transformers(tmp_path):
    build_tokenizer(TINY_TEXT["vocab_size"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    tokenizer = T5PromptTokenizer.load(tmp_path)
    assert isinstance(tokenizer, TransformersTokenizer)
    ids, mask = tokenizer(["a fox"], 8)
    assert ids.shape == mask.shape == (1, 8)


def transformers_model(config: dict, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**config)).eval()


def batch(vocab_size: int, length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with a full row, a padded row and a one-token row."""
    ids = torch.randint(0, vocab_size, (3, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, 11:] = 0
    mask[2, 1:] = 0
    return ids, mask


@pytest.mark.parametrize("config", [TINY_TEXT, WIDE_TEXT], ids=["tiny", "wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_the_encoder_loaded_from_a_transformers_folder_gives_transformers_last_hidden_state(tmp_path, config, dtype):
    """Written by save_pretrained (sharded, with its index), loaded by both in `dtype`: float16
    keeps wo in float32 on both sides, so their residual streams are float32 after the first block."""
    from transformers import UMT5EncoderModel

    transformers_model(config).save_pretrained(tmp_path / "text_encoder", max_shard_size="20KB")
    assert (tmp_path / "text_encoder" / "model.safetensors.index.json").is_file()
    theirs = UMT5EncoderModel.from_pretrained(tmp_path / "text_encoder", dtype=dtype).eval()
    ours = load_text_encoder(tmp_path, dtype, torch.device("cpu"))
    assert {n: p.dtype for n, p in ours.state_dict().items()} == {n: p.dtype for n, p in theirs.state_dict().items()}
    ids, mask = batch(config["vocab_size"])
    for mask in (mask, torch.ones_like(mask)):  # padded rows; none (transformers then passes no mask, only the bias)
        with torch.no_grad():
            want = theirs(ids, mask).last_hidden_state
            got = ours(ids, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_encoder_reads_transformers_state_dict_key_for_key():
    theirs = transformers_model(WIDE_TEXT)
    ours = UMT5Encoder(TextEncoderConfig(**WIDE_TEXT))
    ours.load_state_dict(theirs.state_dict())  # strict: the same names and shapes
    assert ours.encoder.embed_tokens is ours.shared
    assert len(ours.encoder.block) == 5 and all(b.layer[0].SelfAttention.relative_attention_bias.weight.shape == (32, 6)
                                                for b in ours.encoder.block)  # a bias table in every block


def _rewrite_text_encoder(folder: Path, edit) -> None:
    path = folder / "text_encoder" / "model.safetensors"
    tensors = edit(load_file(path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def test_the_token_table_loads_under_either_name_or_both(tmp_path):
    transformers_model(TINY_TEXT).save_pretrained(tmp_path / "text_encoder")
    table = load_file(tmp_path / "text_encoder" / "model.safetensors")["shared.weight"]

    _rewrite_text_encoder(tmp_path, lambda t: {**t, "encoder.embed_tokens.weight": t["shared.weight"].clone()})
    assert torch.equal(load_text_encoder(tmp_path, torch.float32, torch.device("cpu")).shared.weight, table)

    _rewrite_text_encoder(tmp_path, lambda t: {k: v for k, v in t.items() if k != "shared.weight"})  # the stack's name alone
    assert torch.equal(load_text_encoder(tmp_path, torch.float32, torch.device("cpu")).shared.weight, table)

    _rewrite_text_encoder(tmp_path, lambda t: {**t, "shared.weight": t["encoder.embed_tokens.weight"] + 1})
    with pytest.raises(CheckpointError, match="differ"):
        load_text_encoder(tmp_path, torch.float32, torch.device("cpu"))

    _rewrite_text_encoder(tmp_path, lambda t: {k: v for k, v in t.items() if "embed_tokens" not in k and k != "shared.weight"})
    with pytest.raises(CheckpointError, match="token table"):
        load_text_encoder(tmp_path, torch.float32, torch.device("cpu"))


def test_the_encoder_refuses_unknown_and_missing_tensors(tmp_path):
    transformers_model(TINY_TEXT).save_pretrained(tmp_path / "text_encoder")
    original = load_file(tmp_path / "text_encoder" / "model.safetensors")
    _rewrite_text_encoder(tmp_path, lambda t: {**t, "decoder.final_layer_norm.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="unexpected tensors.*decoder.final_layer_norm"):
        load_text_encoder(tmp_path, torch.float32, torch.device("cpu"))
    _rewrite_text_encoder(tmp_path, lambda t: {k: v for k, v in original.items() if "block.1.layer.0.SelfAttention.relative" not in k})
    with pytest.raises(CheckpointError, match="missing tensors.*block.1.layer.0.SelfAttention.relative_attention_bias"):
        load_text_encoder(tmp_path, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("field, value", [("feed_forward_proj", "relu"), ("feed_forward_proj", "gated-silu"), ("model_type", "t5"),
                                          ("is_decoder", True), ("dense_act_fn", "gelu")])
def test_the_encoder_config_refuses_what_it_does_not_compute_naming_the_field(field, value):
    with pytest.raises(CheckpointError, match=f"^text_encoder config: {field} "):
        TextEncoderConfig.from_dict({**TINY_TEXT, "feed_forward_proj": "gated-gelu", field: value})


def test_the_encoder_config_reads_a_transformers_config_file(tmp_path):
    transformers_model(WIDE_TEXT).save_pretrained(tmp_path)
    assert TextEncoderConfig.from_json(tmp_path / "config.json") == TextEncoderConfig(**WIDE_TEXT)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A text encoder and tokenizer as make_tiny writes them (transformers' save_pretrained)."""
    folder = tmp_path_factory.mktemp("text")
    transformers_model(TINY_TEXT, seed=3).save_pretrained(folder / "text_encoder")
    build_tokenizer(TINY_TEXT["vocab_size"]).save_pretrained(folder / "tokenizer")
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_text_encoder_states_equal_what_transformers_gave(tiny_folder, dtype):
    """TextEncoder as it was: transformers' AutoTokenizer and UMT5EncoderModel.from_pretrained on the
    cleaned prompts, zeros past each prompt's tokens; encode and encode_streamed both equal it."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    prompts = ["a lake at dawn", "a red fox running through deep snow " * 8, "", "Ünïcödé ﬁ &amp; 東京"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder / "tokenizer")
    model = UMT5EncoderModel.from_pretrained(tiny_folder / "text_encoder", dtype=dtype).eval()
    ids, mask = transformers_tokens(tokenizer, [clean_prompt(p) for p in prompts], 48)
    with torch.no_grad():
        want = TextEncoder._zero_padding(model(ids, mask).last_hidden_state, mask)

    encoder = TextEncoder.load(tiny_folder, dtype, torch.device("cpu"))
    assert isinstance(encoder.tokenizer, T5PromptTokenizer)
    assert torch.equal(encoder.encode(prompts, 48), want)
    assert torch.equal(encoder.encode_streamed(prompts, 48, torch.device("cpu")), want)

