"""Static-shape execution on CUDA: the transformer forward as CUDA graphs.

A Helios request calls the transformer with a handful of shapes only (one per pyramid stage).
Each (shape, text slot) is captured once; later calls copy their inputs into the graph's static
buffers and replay it, with no Python or launch overhead. All graphs share one memory pool, safe
because they never run concurrently. The VAE decode is not graphed: it is convolution-bound, and
WanChunkDecoder already runs each layer once per chunk.
"""

from __future__ import annotations

import time
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


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else tuple(_clone(t) for t in x)


@dataclass
class _TextSlot:
    source: weakref.ref  # the TextContext whose values the static buffers hold now
    kv: tuple
    used: int


class GraphedTransformer:
    """Drop-in for HeliosTransformer.__call__ in the sampler, replaying CUDA graphs."""

    def __init__(self, transformer: HeliosTransformer, text_slots: int = 2):
        self.transformer = transformer
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.slots: list[_TextSlot] = []
        self.text_slots = text_slots  # cond and uncond: both stay resident under CFG
        self.calls = 0
        self.warmup_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.transformer, name)

    def _slot(self, context: TextContext) -> int:
        """Index of the static text buffers holding `context`, copying it in when it is new."""
        self.calls += 1
        for i, slot in enumerate(self.slots):
            if slot.source() is context:
                slot.used = self.calls
                return i
        if len(self.slots) < self.text_slots:
            self.slots.append(_TextSlot(weakref.ref(context), _clone(context.kv), self.calls))
            return len(self.slots) - 1
        i = min(range(len(self.slots)), key=lambda j: self.slots[j].used)
        _copy_into(self.slots[i].kv, context.kv)
        self.slots[i].source, self.slots[i].used = weakref.ref(context), self.calls
        return i

    def __call__(self, latents, timestep, context: TextContext, history: History, rope: Rope) -> torch.Tensor:
        slot = self._slot(context)
        key = (tuple(latents.shape), latents.dtype, timestep.dtype, tuple(history.short.shape), context.kv[0][0].shape, slot)
        if key not in self.graphs:
            self.graphs[key] = self._capture(latents, timestep, slot, context.dtype, history, rope)
        graph, inputs, output = self.graphs[key]
        _copy_into(inputs["latents"], latents)
        _copy_into(inputs["timestep"], timestep)
        _copy_into(inputs["history"], (history.short, history.mid, history.long))
        _copy_into(inputs["rope"], (rope.cos, rope.sin))
        graph.replay()
        return output.clone()

    def _capture(self, latents, timestep, slot, dtype, history, rope):
        start = time.perf_counter()
        inputs = {
            "latents": latents.clone(),
            "timestep": timestep.clone(),
            "history": (history.short.clone(), history.mid.clone(), history.long.clone()),
            "rope": (rope.cos.clone(), rope.sin.clone()),
        }
        kv = self.slots[slot].kv

        def forward():
            h = History(*inputs["history"])
            return self.transformer(inputs["latents"], inputs["timestep"], TextContext(kv, dtype), h, Rope(*inputs["rope"]))

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            forward()  # warm-up: kernel compilation, cuBLAS workspaces
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            output = forward()
        torch.cuda.synchronize()
        self.warmup_seconds += time.perf_counter() - start
        return graph, inputs, output
