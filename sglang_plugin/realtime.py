"""Helios on SGLang's realtime websocket, `WS /v1/realtime_video/generate` (msgpack).

SGLang runs a realtime session as one engine request per chunk: its API server asks the model's
adapter for each chunk's request and streams the frames the worker returns. Both halves live here:

    HeliosRealtimeAdapter   (API server) `init` -> the core's GenerationRequest, checked against the
                            served checkpoint; `prompt` events queued, one per chunk boundary;
                            refused events answered with an error naming the field
    run_realtime_chunk      (every worker) one core Session per websocket, kept in SGLang's realtime
                            session state from chunk 0 to the release; each chunk request applies its
                            prompt change, runs the chunk's steps and returns its frames

Messages (msgpack maps):

    {"type": "init", "prompt": ..., <request fields>, "max_chunks": N, "first_frame": <image bytes>}
    {"type": "event", "kind": "prompt", "event_id": 7, "payload": {"prompt": ..., "transition_chunks": 2}}

`init` takes the core's request fields (GenerationRequest.from_fields; unset ones take the
variant's defaults, not SGLang's 832x480 / guidance 1.0; `size` "WxH" is also read) plus SGLang's
transport fields. Without `num_frames` the video is open-ended: it runs until the client closes
or `max_chunks`; with it, it ends where the core's request would. A `prompt` event takes over from
the next chunk to begin, blended over `transition_chunks` (default: the request's
interpolation_steps) exactly as `Session.change_prompt`, so a change that starts at chunk k makes
the video of the prompt schedule that starts it at k; events queued before one chunk begins start
at successive chunks, and the chunk that starts one reports its `event_id` (frame batches,
chunk_stats). SGLang answers every event it cannot parse with a bare "invalid event", so a refused
Helios event is answered here, with the next chunk's frames: `{"type": "error", "content":
"payload.prompt: ...", "event_id": ...}`; the session goes on. A refused `init` ends the session
with SGLang's "error during generate loop: <field>: <why>". Closing the websocket stops the
generation after the chunk in flight and releases the core session on every worker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec.msgpack
import numpy as np

from sglang.multimodal_gen.runtime.entrypoints.openai.realtime.realtime_adapter import (
    BaseRealtimeModelAdapter,
    RealtimeChunkInputs,
)
from sglang.multimodal_gen.runtime.entrypoints.openai.utils import build_sampling_params
from sglang.multimodal_gen.runtime.pipelines_core.schedule_batch import OutputBatch, Req
from sglang.multimodal_gen.runtime.realtime.session import BaseRealtimeState
from sglang.multimodal_gen.runtime.utils.logging_utils import init_logger

from helios_backends.errors import RequestError
from helios_backends.loading import plan_for_folder
from helios_backends.request import MAX_NUM_FRAMES, REQUEST_FIELDS, GenerationRequest

from .configs import HeliosCoreConfig, served_checkpoint
from .request_mapping import core_generator

logger = init_logger(__name__)

PROMPT_EVENT = "prompt"
# Keys of a chunk request's condition_inputs: the session's request (chunk 0), a prompt change.
REQUEST_INPUT = "helios_request"
PROMPT_INPUT = "helios_prompt"
# SGLang's own init fields this adapter honours besides the core's: transport and pacing.
TRANSPORT_FIELDS = frozenset({
    "type", "max_chunks", "fps", "generator_device", "output_compression", "realtime_output_format",
    "realtime_preview_max_width", "realtime_output_pacing",
})
EVENT_PAYLOAD_FIELDS = ("prompt", "transition_chunks")


@dataclass(frozen=True)
class PromptChange:
    prompt: str
    transition_chunks: int | None
    event_id: int | None


def init_request(init: Any) -> GenerationRequest:
    """The core request of an `init` message: only the fields the client sent, so unset ones take
    the checkpoint variant's defaults; a field neither the core nor the transport reads is refused."""
    sent = init.model_fields_set
    fields: dict[str, Any] = {}
    for name in sorted(sent - TRANSPORT_FIELDS):
        if name == "size":
            fields.update(_size(init.size))
        elif name == "first_frame":
            fields["image"] = _first_frame(init.first_frame)
        elif name in REQUEST_FIELDS:
            fields[name] = getattr(init, name)
        else:
            raise RequestError(name, "not read by Helios' realtime session (it takes the core's request fields, size, first_frame and SGLang's transport fields)")
    if "first_frame" in sent and "image" in sent:
        raise RequestError("first_frame", "give the first frame once: first_frame or image, not both")
    return GenerationRequest.from_fields(fields)


def _size(value: Any) -> dict[str, int]:
    width, sep, height = str(value).partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise RequestError("size", f'must be "WIDTHxHEIGHT", got {value!r}')
    return {"width": int(width), "height": int(height)}


def _first_frame(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise RequestError("first_frame", f"must be the image file's bytes (msgpack bin); a path or URL is never opened, got {type(value).__name__}")
    return value


def parse_prompt_event(event: Any) -> PromptChange:
    """A `prompt` event -> PromptChange, or a RequestError naming the event's bad field."""
    if event.kind != PROMPT_EVENT:
        raise RequestError("kind", f"{event.kind!r} is not a Helios event; accepted: {PROMPT_EVENT}")
    payload = event.payload
    if not isinstance(payload, dict):
        raise RequestError("payload", f'must be a map {{"prompt": ..., "transition_chunks": ...}}, got {type(payload).__name__}')
    for key in payload:
        if key not in EVENT_PAYLOAD_FIELDS:
            why = "the request's negative prompt stays" if key == "negative_prompt" else f"accepted: {', '.join(EVENT_PAYLOAD_FIELDS)}"
            raise RequestError(f"payload.{key}", f"a live change takes the prompt only ({why})")
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("payload.prompt", f"must be a non-empty string, got {prompt!r}")
    steps = payload.get("transition_chunks")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 1000):
        raise RequestError("payload.transition_chunks", f"must be an integer in [0, 1000], got {steps!r}")
    return PromptChange(prompt, steps, event.event_id)


class HeliosLiveControl:
    """The API server's state of one websocket: its request, queued prompt changes, refusals to send."""

    def __init__(self):
        self.request: GenerationRequest | None = None
        self.refused_init: RequestError | None = None
        self.changes: deque[PromptChange] = deque()
        self.refusals: list[dict[str, Any]] = []
        self.prompt = ""
        self.started_event: int | None = None


class HeliosRealtimeAdapter(BaseRealtimeModelAdapter):
    """SGLang's per-model realtime contract for the Helios core (registered for HeliosCoreConfig)."""

    def create_state(self) -> HeliosLiveControl:
        return HeliosLiveControl()

    async def on_init(self, session, request) -> None:
        """Check the request against the served checkpoint; a refusal is reported by the first chunk
        (SGLang answers a failed init with a bare "invalid generate request")."""
        control: HeliosLiveControl = session.adapter_state
        try:
            core = init_request(request)
            if core.num_frames is None:  # open-ended: the longest request the core takes
                core.num_frames = MAX_NUM_FRAMES
            served = served_checkpoint()
            if served is None:
                raise RuntimeError("realtime Helios needs a local checkpoint folder")
            folder, sp_degree = served
            plan = plan_for_folder(folder, core, sp_degree)
        except RequestError as exc:
            control.refused_init = exc
            return
        control.request = core
        control.prompt = plan.prompts[0]
        limit = plan.num_chunks if request.max_chunks is None else min(request.max_chunks, plan.num_chunks)
        request.max_chunks = limit  # SGLang's loop ends there; the core session is done at its last chunk

    def ingest_event(self, session, event) -> str:
        control: HeliosLiveControl = session.adapter_state
        try:
            change = parse_prompt_event(event)
        except RequestError as exc:
            control.refusals.append({"type": "error", "content": str(exc), "event_id": event.event_id})
            return f"refused: {exc}"
        control.changes.append(change)
        return f"kind=prompt, transition_chunks={change.transition_chunks}, queued={len(control.changes)}"

    async def wait_for_next_chunk(self, session) -> None:
        control: HeliosLiveControl = session.adapter_state
        if control.refused_init is not None:
            raise control.refused_init

    def get_chunk_size(self, session, server_args, chunk) -> int:
        return 1  # one core chunk per request

    def sample_chunk_inputs(self, session, server_args, chunk, chunk_size) -> RealtimeChunkInputs:
        control: HeliosLiveControl = session.adapter_state
        inputs: dict[str, Any] = {}
        if chunk.index == 0:
            inputs[REQUEST_INPUT] = control.request
        control.started_event = None
        if control.changes:
            change = control.changes.popleft()
            inputs[PROMPT_INPUT] = {"prompt": change.prompt, "transition_chunks": change.transition_chunks}
            control.prompt, control.started_event = change.prompt, change.event_id
        return RealtimeChunkInputs(prompt=control.prompt, condition_inputs=inputs)

    def build_sampling_params(self, session, server_args, chunk, chunk_inputs, chunk_size):
        """SGLang's request for one chunk: the transport fields; the core's own are in condition_inputs."""
        init = session.request
        core: GenerationRequest = session.adapter_state.request
        return build_sampling_params(
            chunk.request_id,
            prompt=chunk_inputs.prompt,
            width=core.width,
            height=core.height,
            fps=init.fps,
            seed=core.seed,
            generator_device=init.generator_device if "generator_device" in init.model_fields_set else None,
            output_file_name=chunk.request_id,
            save_output=False,
            output_compression=init.output_compression,
            condition_inputs=chunk_inputs.condition_inputs,
            realtime_chunk_size=chunk_size,
        )

    def get_realtime_event_id(self, session) -> int | None:
        return session.adapter_state.started_event

    async def send_output(self, ws, session, result, batch):
        """Refused events first (answered with the next chunk), then the chunk's frame batches."""
        control: HeliosLiveControl = session.adapter_state
        while control.refusals:
            await ws.send_bytes(msgspec.msgpack.encode(control.refusals.pop(0)))
        return await super().send_output(ws, session, result, batch)

    def clear_state(self, session) -> None:
        control = session.adapter_state
        if isinstance(control, HeliosLiveControl):
            control.changes.clear()
            control.refusals.clear()


# -- the workers' side ----------------------------------------------------------------------------


class HeliosRealtimeState(BaseRealtimeState):
    """One websocket's core Session on a worker, from its first chunk request to SGLang's release."""

    def __init__(self):
        self.session = None
        self.chunks = 0

    def dispose(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            logger.info("Helios core: realtime session released after %d chunk(s)", self.chunks)


def run_realtime_chunk(helios, batch: Req) -> OutputBatch:
    """One chunk request of a realtime session: chunk 0 opens the core session (keeping nothing, so
    an open-ended stream holds constant memory); a prompt change it carries starts at this chunk."""
    state = batch.session.get_or_create_state(HeliosRealtimeState)
    inputs = batch.condition_inputs
    if batch.block_idx == 0:
        state.dispose()
        plan = helios.plan(inputs[REQUEST_INPUT])
        state.session = helios.session(plan, generator=core_generator(batch.sampling_params, plan))
        state.chunks = 0
    session = state.session
    if session is None or session.chunk + 1 != batch.block_idx:
        raise RuntimeError(f"realtime chunk {batch.block_idx}: the session's next chunk is {None if session is None else session.chunk + 1}")
    change = inputs.get(PROMPT_INPUT)
    try:
        if change is not None:
            session.change_prompt(change["prompt"], change["transition_chunks"])
            logger.info("Helios core: live prompt from chunk %d: %r", batch.block_idx, change["prompt"])
        finished = None
        while finished is None:
            finished = session.step()
    except BaseException:
        state.dispose()
        raise
    state.chunks += 1
    if session.done:
        state.dispose()
    return OutputBatch(output=[np.ascontiguousarray(finished.frames[0].numpy())], metrics=batch.metrics)


def register_realtime() -> None:
    """Serve HeliosCoreConfig's servers on SGLang's realtime websocket with this adapter."""
    from sglang.multimodal_gen.runtime.entrypoints.openai.realtime.registry import register_realtime_model_adapter

    register_realtime_model_adapter(HeliosCoreConfig, HeliosRealtimeAdapter)
