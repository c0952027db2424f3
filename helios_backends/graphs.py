"""Static-shape execution on CUDA: the transformer forward as CUDA graphs.

A Helios request calls the transformer with a handful of shapes only (one per pyramid stage).
Each shape is captured once; later calls copy their inputs into the graph's static
buffers and replay it, with no Python or launch overhead. All graphs share one memory pool, safe
because they never run concurrently. The VAE decode is not graphed: it is convolution-bound, and
WanChunkDecoder already runs each layer once per chunk.
"""

from __future__ import annotations

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
class _StaticText:
    source: weakref.ref  # the TextContext whose values `kv` holds now
    kv: tuple


class GraphedTransformer:
    """Drop-in for HeliosTransformer.__call__ in the sampler, replaying CUDA graphs.

    Graphs are keyed by shape only: every graph reads the text K/V from one static buffer, which
    takes a request's context when it changes (cond and uncond alternate under CFG: a ~0.4 GB
    device copy, well under 1% of a call). Keying by a text slot instead made a new request land
    on a new slot and capture its graphs again, mid-request.
    """

    def __init__(self, transformer: HeliosTransformer):
        self.transformer = transformer
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.text: dict[tuple, _StaticText] = {}  # per K/V shape

    def __getattr__(self, name):
        return getattr(self.transformer, name)

    def _text_kv(self, context: TextContext) -> tuple:
        """The static K/V buffers for `context`'s shape, holding `context`'s values."""
        shape = tuple(context.kv[0][0].shape)
        if shape not in self.text:
            self.text[shape] = _StaticText(weakref.ref(context), _clone(context.kv))
        static = self.text[shape]
        if static.source() is not context:
            _copy_into(static.kv, context.kv)
            static.source = weakref.ref(context)
        return static.kv

    def __call__(self, latents, timestep, context: TextContext, history: History, rope: Rope) -> torch.Tensor:
        kv = self._text_kv(context)
        key = (tuple(latents.shape), latents.dtype, timestep.dtype, tuple(history.short.shape), tuple(kv[0][0].shape))
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
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            output = forward()
        torch.cuda.synchronize()
        return graph, inputs, output
