"""Static-shape execution on CUDA: the transformer forward as CUDA graphs.

A Helios request calls the transformer with a handful of shapes only (one per pyramid stage).
Each shape is captured once; later calls copy their inputs into the graph's static
buffers and replay it, with no Python or launch overhead. All graphs share one memory pool, safe
because they never run concurrently. The VAE decode is not graphed: it is convolution-bound, and
WanChunkDecoder already runs each layer once per chunk.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import torch

from .transformer import History, HeliosTransformer, Rope, TextContext


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src):
            _copy_into(d, s)


MAX_TEXT_SLOTS = 2  # the live contexts of one request: cond and uncond under CFG


def _kv_shape(context: TextContext) -> tuple:
    return tuple(context.kv[0][0].shape)


@dataclass(eq=False)  # identity: `==` would compare the K/V tensors
class _TextSlot:
    kv: tuple  # the static K/V buffers this slot's graphs read
    owner: weakref.ref  # the TextContext whose values `kv` holds


class GraphedTransformer:
    """Drop-in for HeliosTransformer.__call__ in the sampler, replaying CUDA graphs.

    Graphs read the text K/V from static buffers, a few slots per K/V shape, each held by one live
    TextContext. `encode_text` hands out contexts that live in a free slot, so the graphs read them
    with no copy and no second copy of the K/V (~0.4 GB for the 14B model) stays allocated. A slot
    is free once its context is gone, so a new request lands in the slot of the last one and
    replays its graphs: keying graphs by a new slot per request made every request capture its
    graphs again, mid-request. A context that finds no slot (made elsewhere, or while the slots
    were held) is copied into a free one, or runs eagerly when every slot stays held.
    """

    def __init__(self, transformer: HeliosTransformer):
        self.transformer = transformer
        self.pool = None  # made at the first capture
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.text: dict[tuple, list[_TextSlot]] = {}

    def __getattr__(self, name):
        return getattr(self.transformer, name)

    def encode_text(self, text: torch.Tensor) -> TextContext:
        context = self.transformer.encode_text(text)
        index = self._slot_of(context)
        if index is None:
            return context
        slot = self.text[_kv_shape(context)][index]
        if slot.kv is context.kv:
            return context
        owned = TextContext(slot.kv, context.dtype)  # `context`'s own buffers are freed on return
        slot.owner = weakref.ref(owned)
        return owned

    @staticmethod
    def _free_slot(slots: list[_TextSlot]) -> int | None:
        """The index of a slot whose context is gone; when the slots are full, after a garbage
        collection (a finished request's generator may hold its contexts in a reference cycle).
        Slots are told apart by position, never by `==`: a dataclass compares its tensors."""
        for attempt in range(2):
            free = next((i for i, s in enumerate(slots) if s.owner() is None), None)
            if free is not None or len(slots) < MAX_TEXT_SLOTS or attempt:
                return free
            gc.collect()

    def _slot_of(self, context: TextContext) -> int | None:
        """The index of the slot holding `context`'s values, claiming one if needed; None when
        every slot stays held by other live contexts."""
        slots = self.text.setdefault(_kv_shape(context), [])
        for i, slot in enumerate(slots):
            if slot.owner() is context:
                return i
        free = self._free_slot(slots)
        if free is not None:
            _copy_into(slots[free].kv, context.kv)
            slots[free].owner = weakref.ref(context)
            return free
        if len(slots) < MAX_TEXT_SLOTS:
            slots.append(_TextSlot(context.kv, weakref.ref(context)))  # contexts are immutable: its buffers serve
            return len(slots) - 1
        return None

    def __call__(self, latents, timestep, context: TextContext, history: History, rope: Rope) -> torch.Tensor:
        index = self._slot_of(context)
        if index is None:
            return self.transformer(latents, timestep, context, history, rope)
        kv = self.text[_kv_shape(context)][index].kv
        key = (tuple(latents.shape), latents.dtype, timestep.dtype, tuple(history.short.shape), _kv_shape(context), index)
        if key not in self.graphs:
            self.graphs[key] = self._capture(latents, timestep, kv, context.dtype, history, rope)
        graph, inputs, output = self.graphs[key]
        _copy_into(inputs["latents"], latents)
        _copy_into(inputs["timestep"], timestep)
        _copy_into(inputs["history"], (history.short, history.mid, history.long))
        _copy_into(inputs["rope"], (rope.cos, rope.sin))
        graph.replay()
        return output.clone()

    def _capture(self, latents, timestep, kv, dtype, history, rope):
        inputs = {
            "latents": latents.clone(),
            "timestep": timestep.clone(),
            "history": (history.short.clone(), history.mid.clone(), history.long.clone()),
            "rope": (rope.cos.clone(), rope.sin.clone()),
        }

        def forward():
            h = History(*inputs["history"])
            return self.transformer(inputs["latents"], inputs["timestep"], TextContext(kv, dtype), h, Rope(*inputs["rope"]))

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            forward()  # warm-up: kernel compilation, cuBLAS workspaces
        torch.cuda.current_stream().wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            output = forward()
        torch.cuda.synchronize()
        return graph, inputs, output
