"""Layer-wise offload: which blocks are resident when, nothing kept after a request, same outputs."""

from __future__ import annotations

import pytest
import torch

from helios_backends.loading import load_transformer
from helios_backends.offload import LayerOffload
from helios_backends.transformer import FramePositions, History

from .conftest import relative_error


@pytest.fixture()
def pair(checkpoints):
    folder, _ = checkpoints["mid"]
    plain = load_transformer(folder, torch.float32, torch.device("cpu"))
    offloaded = load_transformer(folder, torch.float32, torch.device("cpu"))
    return plain, offloaded


def forward(model):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 9, 8, 16, generator=g)
    history = History(*(torch.randn(1, 16, n, 8, 16, generator=g) for n in (2, 2, 16)))
    text = torch.randn(1, 12, 32, generator=g)
    with torch.no_grad():
        return model(lat, torch.tensor([500]), text, history, positions=FramePositions.helios((16, 2, 1), 9, True))


def test_offloaded_blocks_give_the_same_output(pair):
    plain, offloaded = pair
    offload = LayerOffload(offloaded.blocks, torch.device("cpu"), slots=1)
    expected = forward(plain)
    for _ in range(2):  # the second forward runs on blocks prefetched at the end of the first
        assert relative_error(forward(offloaded), expected) == 0.0
    offload.release()


def test_each_block_is_loaded_before_it_runs_and_at_most_slots_are_resident(pair):
    _, model = pair
    offload = LayerOffload(model.blocks, torch.device("cpu"), slots=1)
    seen = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda b, a, i=i: seen.append((i, list(offload.resident))))
    forward(model)
    forward(model)
    assert all(i in resident and len(resident) <= 1 for i, resident in seen)
    runs = [e for e in offload.history if e[0] == "run"]
    assert [b for _, b in runs] == [0, 1, 0, 1] * 2  # per forward: text K/V of each block, then the blocks
    first_run = offload.history.index(("run", 1))
    assert ("load", 1) in offload.history[:first_run]  # block 1 was fetched while block 0 ran


def test_with_a_slot_per_block_each_block_is_loaded_once_and_stays_for_later_forwards(pair):
    _, model = pair
    offload = LayerOffload(model.blocks, torch.device("cpu"), slots=len(model.blocks))
    expected = forward(model)
    for _ in range(2):
        assert relative_error(forward(model), expected) == 0.0
    assert [e for e in offload.history if e[0] == "load"] == [("load", i) for i in range(len(model.blocks))]


def test_weights_live_in_the_host_buffer_except_while_their_block_runs(pair):
    _, model = pair
    offload = LayerOffload(model.blocks, torch.device("cpu"), slots=1)
    inside = []

    def check(block, args, i):
        ptr = block.attn1.to_q.weight.data_ptr()
        slot = offload.slots[offload.slot_of[i]]
        inside.append(slot.data_ptr() <= ptr < slot.data_ptr() + slot.numel())

    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda b, a, i=i: check(b, a, i))
    forward(model)
    assert inside == [True, True]
    for i, block in enumerate(model.blocks):
        host = offload.host[i]
        assert host.data_ptr() <= block.attn1.to_q.weight.data_ptr() < host.data_ptr() + host.numel()


def test_release_leaves_nothing_resident(pair):
    _, model = pair
    offload = LayerOffload(model.blocks, torch.device("cpu"), slots=2)
    forward(model)
    assert offload.device_bytes > 0
    offload.release()
    assert offload.resident == [] and offload.device_bytes == 0 and offload.slots == [None, None]
    forward(model)  # and the next request still runs
    assert offload.resident


def test_resident_blocks_stay_and_only_the_others_stream_to_the_same_output(pair):
    """The 12 / 16 GB profile: the first blocks never leave the device, so each forward copies only the rest."""
    plain, offloaded = pair
    offload = LayerOffload(offloaded.blocks, torch.device("cpu"), slots=1, resident=1)
    expected = forward(plain)
    for _ in range(2):
        assert relative_error(forward(offloaded), expected) == 0.0
    assert ("load", 0) not in offload.history and ("run", 0) not in offload.history  # block 0 is never streamed
    assert [e for e in offload.history if e[0] == "load"] == [("load", 1)]  # the one streamed block stays in the one slot
    block_bytes = sum(p.numel() * p.element_size() for p in offloaded.blocks[0].parameters())
    offload.release()
    assert offload.resident == [0] and offload.device_bytes == block_bytes  # only the pinned block outlives a request
    with pytest.raises(ValueError, match=r"resident blocks must be between 0 and 1 \(one block at least streams\), got 2"):
        LayerOffload(plain.blocks, torch.device("cpu"), resident=2)


def test_slot_count_is_checked(pair):
    _, model = pair
    with pytest.raises(ValueError, match=r"offload slots must be between 1 and 2 \(the streamed block count\)"):
        LayerOffload(model.blocks, torch.device("cpu"), slots=3)


@pytest.mark.parametrize("mode", ["model", "layer"])
def test_offloaded_run_equals_the_plain_run_and_frees_the_device_after(checkpoints, cores, mode):
    from helios_backends.pipeline import Helios
    from helios_backends.request import GenerationRequest

    folder, _ = checkpoints["mid"]
    req = GenerationRequest(prompt="a lake", height=64, width=128, num_frames=40, pyramid_steps=(2, 1, 1), seed=4)
    core = Helios.from_pretrained(folder, offload=mode, offload_slots=1)
    got = torch.cat([c.latents for c in core.stream(req, decode=False)], 2)
    want = torch.cat([c.latents for c in cores["mid"].stream(req, decode=False)], 2)
    assert relative_error(got, want) <= 1e-6
    plain = Helios.from_pretrained(folder)  # frames too: every mode decodes a latent frame per VAE pass by default
    assert torch.equal(torch.cat([c.frames for c in core.stream(req)], 1), torch.cat([c.frames for c in plain.stream(req)], 1))
    if mode == "layer":
        assert core.layers.resident == [] and core.layers.device_bytes == 0


def test_unknown_offload_mode_is_named(checkpoints):
    from helios_backends.errors import CheckpointError
    from helios_backends.pipeline import Helios

    with pytest.raises(CheckpointError, match=r"offload must be one of \['none', 'model', 'layer'\], got 'disk'"):
        Helios.from_pretrained(checkpoints["mid"][0], offload="disk")


def test_text_projection_outside_the_forward_loads_its_block(pair):
    plain, offloaded = pair
    offload = LayerOffload(offloaded.blocks, torch.device("cpu"), slots=1)
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = offloaded.encode_text(text), plain.encode_text(text)
    assert all(torch.equal(a, b) for (ka, va), (kb, vb) in zip(got.kv, want.kv) for a, b in ((ka, kb), (va, vb)))
    assert [e for e in offload.history if e[0] == "run"] == [("run", 0), ("run", 1)]


def test_layer_offload_encodes_prompts_block_by_block_to_the_same_states_leaving_the_weights_in_place(checkpoints):
    from helios_backends.text import TextEncoder

    folder, _ = checkpoints["mid"]
    encoder = TextEncoder.load(folder, torch.float32, torch.device("cpu"))
    before = {name: p.data_ptr() for name, p in encoder.encoder.named_parameters()}
    prompts = ["a lake at dawn", "a red fox running through deep snow"]
    streamed = encoder.encode_streamed(prompts, 24, torch.device("cpu"))
    assert torch.equal(streamed, encoder.encode(prompts, 24))
    assert {name: p.data_ptr() for name, p in encoder.encoder.named_parameters()} == before
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in encoder.encoder.encoder.block)  # its hooks are gone
