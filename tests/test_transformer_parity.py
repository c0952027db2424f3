"""Our transformer forward equals diffusers' HeliosTransformer3DModel on the same weights."""

from __future__ import annotations

import pytest
import torch

from helios_backends.loading import load_transformer
from helios_backends.transformer import FramePositions, History

from .conftest import build_diffusers_pipeline, relative_error

TOL = 1e-5


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "amplify_history"])
def pair(request, tmp_path_factory):
    ref = build_diffusers_pipeline("mid", amplify_history=request.param).transformer.eval()
    folder = tmp_path_factory.mktemp("transformer")
    ref.save_pretrained(folder / "transformer", max_shard_size="30KB")
    return ref, load_transformer(folder, torch.float32, torch.device("cpu"))


def inputs(batch: int, h: int = 8, w: int = 16, hist_hw: tuple[int, int] = (8, 16)):
    g = torch.Generator().manual_seed(batch)
    lat = torch.randn(batch, 16, 9, h, w, generator=g)
    text = torch.randn(batch, 12, 32, generator=g)
    hs = torch.randn(batch, 16, 2, *hist_hw, generator=g)
    hm = torch.randn(batch, 16, 2, *hist_hw, generator=g)
    hl = torch.randn(batch, 16, 16, *hist_hw, generator=g)
    return lat, text, History(hs, hm, hl)


def reference(ref, lat, t, text, history, pos):
    with torch.no_grad():
        return ref(
            lat, t, text,
            indices_hidden_states=pos.current[None],
            indices_latents_history_short=pos.short[None],
            indices_latents_history_mid=pos.mid[None],
            indices_latents_history_long=pos.long[None],
            latents_history_short=history.short,
            latents_history_mid=history.mid,
            latents_history_long=history.long,
            return_dict=False,
        )[0]


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_with_history_matches_diffusers(pair, batch):
    ref, ours = pair
    lat, text, history = inputs(batch)
    pos = FramePositions.helios((16, 2, 1), 9, keep_first_frame=True)
    t = torch.full((batch,), 637, dtype=torch.int64)
    expected = reference(ref, lat, t, text, history, pos)
    with torch.no_grad():
        got = ours(lat, t, text, history, positions=pos)
    assert got.shape == expected.shape == lat.shape
    assert relative_error(got, expected) <= TOL


def test_forward_at_a_pyramid_stage_smaller_than_its_history_matches_diffusers(pair):
    ref, ours = pair
    lat, text, history = inputs(2, h=2, w=4)
    pos = FramePositions.helios((16, 2, 1), 9, keep_first_frame=True)
    t = torch.tensor([999.0, 412.5])
    expected = reference(ref, lat, t, text, history, pos)
    with torch.no_grad():
        got = ours(lat, t, text, history, positions=pos)
    assert relative_error(got, expected) <= TOL


def test_forward_without_history_matches_diffusers(pair):
    ref, ours = pair
    lat, text, _ = inputs(2)
    t = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        expected = ref(lat, t, text, return_dict=False)[0]
        got = ours(lat, t, text)
    assert relative_error(got, expected) <= TOL


def test_precomputed_rope_gives_the_same_output(pair):
    _, ours = pair
    lat, text, history = inputs(1)
    pos = FramePositions.helios((16, 2, 1), 9, keep_first_frame=True)
    t = torch.tensor([500])
    rope = ours.rope_for(pos, (8, 16), (8, 16), "cpu")
    with torch.no_grad():
        assert torch.equal(ours(lat, t, text, history, rope=rope), ours(lat, t, text, history, positions=pos))


def test_bfloat16_load_keeps_the_fp32_modules_in_fp32(tmp_path):
    ref = build_diffusers_pipeline("mid", amplify_history=True).transformer
    ref.save_pretrained(tmp_path / "transformer")
    model = load_transformer(tmp_path, torch.bfloat16, torch.device("cpu"))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.history_key_scale"] == torch.float32
    assert dtypes["norm_out.scale_shift_table"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["proj_out.weight"] == torch.bfloat16


def test_frame_positions_are_upstreams_relative_indices():
    pos = FramePositions.helios((16, 2, 1), 9, keep_first_frame=True)
    assert pos.short.tolist() == [0, 19]
    assert pos.long.tolist() == list(range(1, 17))
    assert pos.mid.tolist() == [17, 18]
    assert pos.current.tolist() == list(range(20, 29))
