"""`Session`: one request in flight, the one run loop every front end drives.

    with helios.session(request) as session:      # prompts and conditioning encoded
        for chunk in session:                      # ChunkOutput(index, latents, frames)
            ...                                    # session.change_prompt / cancel from anywhere

A streaming front end iterates the chunks; an engine that schedules steps itself calls `step()`,
which begins a chunk when none is in flight and returns the chunk its step finished. `video()`
and `latents()` assemble the whole output of the chunks the session kept. Leaving the session,
normally, on an error or a cancellation, releases what the request held on the device: the
offloaded blocks' slots (Helios.release) and its text contexts, whose CUDA-graph text slots
free once the contexts are gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .sampler import Chunk, Generation

if TYPE_CHECKING:
    from .pipeline import Helios

Keep = Literal["frames", "latents"]


@dataclass(frozen=True)
class ChunkOutput:
    """A finished chunk: latents (B, 16, T, h, w) and, when decoded, frames (B, T', H, W, 3) uint8."""

    index: int
    latents: torch.Tensor
    frames: torch.Tensor | None


class PendingFrames:
    """Frames being decoded: `ready()` polls without blocking, `result()` waits for them."""

    def __init__(self, frames: torch.Tensor, done: "torch.cuda.Event | None"):
        self._frames = frames
        self._done = done

    def ready(self) -> bool:
        return self._done is None or self._done.query()

    def result(self) -> torch.Tensor:
        if self._done is not None:
            self._done.synchronize()
        return self._frames


def _release(helios: "Helios", generation: Generation) -> None:
    generation.close()
    helios.release()


class Session:
    """One request's generation: its chunks, live prompt changes, cancellation and release.

    decode: chunks carry their frames (else latents only). keep: what the session keeps of every
    chunk it hands out, for `video()` ("frames") or `latents()` ("latents", on the host in fp32
    after the conditioning prefix, as diffusers' output_type="latent"); None keeps nothing.
    """

    def __init__(self, helios: "Helios", generation: Generation, decode: bool = True, keep: Keep | None = None):
        if keep not in (None, "frames", "latents"):
            raise ValueError(f"keep must be 'frames', 'latents' or None, got {keep!r}")
        if keep == "frames" and not decode:
            raise ValueError("keep='frames' needs decode=True")
        self.helios = helios
        self.generation = generation
        self.decode = decode
        self.keep = keep
        self._kept: list[torch.Tensor] = []
        if keep == "latents" and generation.prefix_latents is not None:
            self._kept.append(generation.prefix_latents.float().cpu())
        # Runs at close(), or when a session that was never closed is garbage (an engine dropped it).
        self._release = weakref.finalize(self, _release, helios, generation)

    # -- progress ---------------------------------------------------------------------------------

    @property
    def plan(self):
        return self.generation.plan

    @property
    def chunk(self) -> int:
        """The chunk in flight, or the last one begun (-1 before the first)."""
        return self.generation.chunk

    @property
    def total_steps(self) -> int:
        return self.generation.total_steps

    @property
    def steps_done(self) -> int:
        return self.generation.steps_done

    @property
    def done(self) -> bool:
        return self.generation.done

    def chunk_steps(self, chunk: int) -> int:
        """Denoising steps of `chunk` over all its pyramid stages."""
        return sum(self.plan.chunk_steps(chunk, self.generation.scheduler.kind))

    # -- running ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ChunkOutput]:
        return self.chunks()

    def chunks(self, on_step: Callable[["Session"], None] | None = None) -> Iterator[ChunkOutput]:
        """Run the request chunk by chunk, handing out each chunk as soon as its frames exist.

        On CUDA the host queues chunk k+1's steps while the GPU still decodes chunk k; its frames
        are handed out at the first step boundary after they are ready. `on_step` is called after
        every step. The session closes when the iteration ends, raises or is abandoned.
        """
        try:
            yield from self._chunks(on_step)
        finally:
            self.close()

    def _chunks(self, on_step) -> Iterator[ChunkOutput]:
        gen = self.generation
        pending: tuple[Chunk, PendingFrames] | None = None
        with torch.no_grad():
            while not gen.done:
                if not gen.in_chunk:  # one begun by step() goes on
                    gen.begin_chunk()
                while not gen.chunk_denoised:
                    gen.step()
                    if on_step is not None:
                        on_step(self)
                    if pending is not None and pending[1].ready():
                        yield self._kept_output(pending[0], pending[1].result())
                        pending = None
                chunk = gen.end_chunk()
                if pending is not None:
                    yield self._kept_output(pending[0], pending[1].result())
                    pending = None
                if self.decode:
                    pending = (chunk, self.helios.decode_async(gen, chunk))
                    if pending[1].ready():  # decoded synchronously (off CUDA) or already done
                        yield self._kept_output(chunk, pending[1].result())
                        pending = None
                else:
                    yield self._kept_output(chunk, None)
            if pending is not None:
                yield self._kept_output(pending[0], pending[1].result())

    def run(self, on_step: Callable[["Session"], None] | None = None) -> None:
        """Run every remaining chunk (kept as `keep` says), then close."""
        for _ in self.chunks(on_step):
            pass

    def step(self) -> ChunkOutput | None:
        """One denoising step for engines that schedule steps themselves: begins the next chunk
        when none is in flight; returns the chunk this step finished (decoded at once when
        `decode`), else None."""
        gen = self.generation
        with torch.no_grad():
            if not gen.in_chunk:
                gen.begin_chunk()
            gen.step()
            if not gen.chunk_denoised:
                return None
            chunk = gen.end_chunk()
            return self._kept_output(chunk, self.helios.decode(gen, chunk) if self.decode else None)

    def _kept_output(self, chunk: Chunk, frames: torch.Tensor | None) -> ChunkOutput:
        if self.keep == "frames":
            self._kept.append(frames)
        elif self.keep == "latents":
            self._kept.append(chunk.latents.float().cpu())
        return ChunkOutput(chunk.index, chunk.latents, frames)

    # -- the whole output -------------------------------------------------------------------------

    def video(self) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 frames of every chunk handed out (keep="frames")."""
        if self.keep != "frames":
            raise RuntimeError(f"video: the session keeps {self.keep or 'nothing'}, not frames")
        return torch.cat(self._kept, dim=1)

    def latents(self) -> torch.Tensor:
        """(B, 16, T, h, w) fp32 host latents: the conditioning prefix, then every chunk handed out (keep="latents")."""
        if self.keep != "latents":
            raise RuntimeError(f"latents: the session keeps {self.keep or 'nothing'}, not latents")
        return torch.cat(self._kept, dim=2)

    # -- control ----------------------------------------------------------------------------------

    def change_prompt(self, prompt: str, transition_chunks: int | None = None) -> None:
        """Take `prompt` from the next chunk boundary on, blending in from the current prompt over
        `transition_chunks` chunks (default: the request's interpolation_steps), as a scheduled
        prompt does. Under CFG the negative prompt stays. Thread-safe: the prompt is encoded on
        the calling thread."""
        with torch.no_grad():
            text = self.helios.encode_prompts([prompt], self.plan.max_sequence_length)
        self.generation.set_prompt(text, transition_chunks)

    def cancel(self) -> None:
        """Stop at the next step with GenerationCancelled; safe from another thread."""
        self.generation.cancel()

    @property
    def closed(self) -> bool:
        return not self._release.alive

    def close(self) -> None:
        """Release what the request holds on the device; idempotent."""
        self._release()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
