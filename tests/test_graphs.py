"""GraphedTransformer's text slots: which static K/V buffer a request's context lives in.

The graphs themselves need CUDA (tests/gpu); which slot a context takes, and when a copy is made,
is the same on the CPU, so these rules are specified here.
"""

from __future__ import annotations

import gc

import torch

from helios_backends.graphs import MAX_TEXT_SLOTS, GraphedTransformer
from helios_backends.tiny import TINY_TRANSFORMER
from helios_backends.transformer import FramePositions, History, HeliosTransformer, TextContext


def graphed() -> GraphedTransformer:
    torch.manual_seed(0)
    return GraphedTransformer(HeliosTransformer(TINY_TRANSFORMER).eval())


def text(seed: int) -> torch.Tensor:
    return torch.randn(1, 8, TINY_TRANSFORMER.text_dim, generator=torch.Generator().manual_seed(seed))


def slots(g: GraphedTransformer) -> list:
    (slot_list,) = g.text.values()
    return slot_list


def assert_same_values(context, want):
    for (k, v), (wk, wv) in zip(context.kv, want.kv):
        assert torch.equal(k, wk) and torch.equal(v, wv)


@torch.no_grad()
def test_a_requests_context_is_the_graphs_static_buffer_itself_not_a_copy():
    g = graphed()
    context = g.encode_text(text(0))
    assert slots(g)[0].kv is context.kv
    assert g._slot_of(context) == 0


@torch.no_grad()
def test_the_next_request_takes_the_finished_requests_slot_with_its_own_values():
    g = graphed()
    first = g.encode_text(text(0))
    buffers = first.kv
    del first
    second = g.encode_text(text(1))
    assert len(slots(g)) == 1 and second.kv is buffers  # same buffers: the same graphs replay
    assert_same_values(second, g.transformer.encode_text(text(1)))


@torch.no_grad()
def test_cond_and_uncond_of_one_request_hold_one_slot_each():
    g = graphed()
    cond, uncond = g.encode_text(text(0)), g.encode_text(text(1))
    assert [g._slot_of(cond), g._slot_of(uncond)] == [0, 1]
    assert_same_values(cond, g.transformer.encode_text(text(0)))


@torch.no_grad()
def test_a_context_made_outside_encode_text_takes_a_new_slot_without_a_copy():
    g = graphed()
    outsider = g.transformer.encode_text(text(3))
    assert g._slot_of(outsider) == 0 and slots(g)[0].kv is outsider.kv


@torch.no_grad()
def test_a_context_left_in_a_reference_cycle_is_collected_to_free_its_slot():
    g = graphed()
    gc.disable()
    try:
        held = [g.encode_text(text(i)) for i in range(MAX_TEXT_SLOTS)]
        cycle = {"contexts": held}
        cycle["self"] = cycle
        del held, cycle
        context = g.encode_text(text(9))
    finally:
        gc.enable()
    assert len(slots(g)) == MAX_TEXT_SLOTS and any(s.kv is context.kv for s in slots(g))


@torch.no_grad()
def test_a_context_made_outside_the_slots_runs_eagerly_while_every_slot_is_held_then_is_copied_in():
    g = graphed()
    held = [g.encode_text(text(i)) for i in range(MAX_TEXT_SLOTS)]
    outsider = g.transformer.encode_text(text(5))
    c = TINY_TRANSFORMER.in_channels
    positions = FramePositions.helios((16, 2, 1), 2, keep_first_frame=True)
    history = History(torch.randn(1, c, 2, 4, 4), torch.randn(1, c, 2, 4, 4), torch.randn(1, c, 16, 4, 4))
    rope = g.transformer.rope_for(positions, (4, 4), (4, 4), torch.device("cpu"))
    args = (torch.randn(1, c, 2, 4, 4), torch.tensor([500.0]), outsider, history, rope)
    assert g._slot_of(outsider) is None
    assert torch.equal(g(*args), g.transformer(*args))  # no graph: the eager transformer
    assert not g.graphs
    del held[0]
    assert g._slot_of(outsider) == 0  # the freed slot now holds the outsider's values
    assert_same_values(TextContext(slots(g)[0].kv, outsider.dtype), outsider)


@torch.no_grad()
def test_freeing_either_of_two_live_contexts_lets_a_third_take_exactly_that_slot():
    for freed in range(MAX_TEXT_SLOTS):
        g = graphed()
        live = [g.encode_text(text(0)), g.encode_text(text(1))]
        buffers = [c.kv for c in live]
        del live[freed]
        third = g.encode_text(text(2))
        (kept,) = live
        assert third.kv is buffers[freed] and g._slot_of(third) == freed
        assert g._slot_of(kept) == 1 - freed
        assert_same_values(third, g.transformer.encode_text(text(2)))
        assert_same_values(kept, g.transformer.encode_text(text(1 - freed)))


@torch.no_grad()
def test_three_cfg_requests_in_a_row_reuse_the_two_slots_with_each_requests_values():
    g = graphed()
    for request in range(3):
        cond, uncond = g.encode_text(text(2 * request)), g.encode_text(text(2 * request + 1))
        assert sorted([g._slot_of(cond), g._slot_of(uncond)]) == [0, 1] and len(slots(g)) == 2
        assert_same_values(cond, g.transformer.encode_text(text(2 * request)))
        assert_same_values(uncond, g.transformer.encode_text(text(2 * request + 1)))
        del cond, uncond
