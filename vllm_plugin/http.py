"""Front-door validation of Helios video requests in vLLM-Omni's API server (`--middleware`).

vLLM-Omni queues an async `POST /v1/videos` job before the engine sees it, so a bad size or
extra parameter would be answered 200 and fail later. vLLM's own `--middleware` option lets us
check the form against the checkpoint first, with the same translation the engine uses
(`to_generation_request` + `plan_for_folder`, with the served Ulysses x Ring degree), and
answer 400 naming the field:

    vllm serve DIR --omni --host 127.0.0.1 --middleware helios_vllm.http.HeliosRequestCheck

The operator must name it: vLLM runs `vllm.general_plugins` in the API server before any app
exists, and loads `vllm.endpoint_plugins` (which see the app) only when listed in VLLM_PLUGINS.

It is also the front door (helios_vllm.front_door): a form field that names a URL, an option
the core lacks or no field at all is refused the same way, and so is a `lora` whose path the
server was not configured with (helios_vllm.lora), `/v1/omni/sleep` and `/wakeup` are
refused while the server keeps serving, a failed job reads back as 200 with
`status: "failed"` (what the OpenAI SDK's `retrieve` / `create_and_poll` expect), and a client
that disconnects from `/v1/videos/sync` cancels the route, which aborts its job
(`run_until_disconnect`).

Anything the check cannot read (another model, a form the server itself will refuse, a body
past the media limit) passes through unchanged; the engine-side check still runs on every
request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helios_backends.errors import RequestError
from helios_backends.fields import form_fields
from helios_backends.front_door import configured_lora, end_of_body, read_body, replay, rewritten_response, run_until_disconnect
from helios_backends.loading import plan_for_folder, read_configs
from helios_backends.media_read import MAX_IMAGE_BYTES, MAX_VIDEO_BYTES

from . import ARCHITECTURES
from .front_door import SLEEP_REFUSAL, SLEEP_ROUTES, refused_form_field
from .lora import FIELD as LORA_FIELD, check_request_loras, startup_loras
from .requests import HELIOS_EXTRA_PARAMS, to_generation_request

SYNC_ROUTE = "/v1/videos/sync"
VIDEO_ROUTES = frozenset({"/v1/videos", SYNC_ROUTE})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# The form fields vLLM-Omni reads that are not plain scalars of `VideoGenerationRequest`.
NON_SCALAR_FIELDS = frozenset({"extra_params", "lora", "image_reference", "video_reference", "audio_reference"})
MAX_CHECKED_BODY = 2 * max(MAX_IMAGE_BYTES, MAX_VIDEO_BYTES)


@dataclass
class FormSampling:
    """The sampling fields `to_generation_request` reads, as vLLM-Omni would fill them from the form."""

    extra_args: Any
    height: int | None
    width: int | None
    num_frames: int | None
    seed: int | None
    num_inference_steps: int | None
    guidance_scale: float | None
    guidance_scale_provided: bool
    num_outputs_per_prompt: int
    max_sequence_length: int | None = None


def served_sp_degree(app: Any) -> int:
    """Ulysses x Ring from the server's --ulysses-degree / --ring-degree (unset: 1).

    Degrees set in a stage config file instead are not seen here; the engine's own check,
    which reads the resolved parallel config, refuses those requests.
    """
    args = getattr(getattr(app, "state", None), "args", None)
    return (getattr(args, "ulysses_degree", None) or 1) * (getattr(args, "ring_degree", None) or 1)


def served_lora_paths(app: Any) -> list[str]:
    """The server's --lora-path values: the adapters (and folders of them) a request may name."""
    args = getattr(getattr(app, "state", None), "args", None)
    return [path for path, _ in startup_loras(getattr(args, "lora_path", None), None)]


def check_lora_field(value: Any, configured: list[str], folder: Path) -> None:
    """Refuse a request `lora` whose path the server was not configured with, or whose adapter does
    not fit the checkpoint's transformer; an unreadable object is the route's to refuse."""
    from vllm_omni.entrypoints.openai.utils import parse_lora_request

    try:
        lora_request, _ = parse_lora_request(json.loads(value) if isinstance(value, str) else value)
    except ValueError:
        return
    if lora_request is not None:
        path = configured_lora(lora_request.lora_path, configured, LORA_FIELD)
        check_request_loras(lora_request, [(path, 1.0)], read_configs(folder).transformer)


def helios_folder(app: Any) -> Path | None:
    """The served folder when it is a Helios checkpoint, else None."""
    args = getattr(getattr(app, "state", None), "args", None)
    folder = Path(str(getattr(args, "model", "") or ""))
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if index.get("_class_name") in ARCHITECTURES else None


async def form_request(form) -> tuple[dict, FormSampling] | None:
    """(prompt, sampling) as vLLM-Omni builds them from the form; None when the server itself will refuse the form.

    A Helios option sent as a form field of its own (or as repeated `key[]` fields, as the OpenAI
    SDK sends a list) is refused naming it: vLLM-Omni reads Helios options only from extra_params.
    """
    from vllm_omni.entrypoints.openai.protocol.videos import VideoGenerationRequest

    sent = form_fields(form.multi_items())
    misplaced = sorted(HELIOS_EXTRA_PARAMS & sent.keys())
    if misplaced:  # vLLM-Omni's form parser would drop it without a word
        raise RequestError(misplaced[0], "is a Helios option: send it in extra_params (a JSON object), which vLLM-Omni passes on")
    fields = {k: v for k, v in sent.items() if isinstance(v, str) and v != "" and k in VideoGenerationRequest.model_fields}
    try:
        extra = json.loads(fields.pop("extra_params", "null"))
        request = VideoGenerationRequest(**{k: v for k, v in fields.items() if k not in NON_SCALAR_FIELDS})
        video = request.resolve_video_params()
    except (ValueError, ValidationError):
        return None
    prompt: dict[str, Any] = {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    upload = form.get("input_reference")
    if isinstance(upload, UploadFile):
        kind = "video" if (upload.content_type or "").startswith("video/") else "image"
        prompt["multi_modal_data"] = {kind: await upload.read()}
    sampling = FormSampling(
        extra_args=extra,
        height=video.height,
        width=video.width,
        num_frames=video.num_frames,
        seed=request.seed,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        guidance_scale_provided=request.guidance_scale is not None,
        num_outputs_per_prompt=request.num_outputs_per_prompt or 1,
    )
    return prompt, sampling


def is_job_path(path: str) -> bool:
    """GET /v1/videos/{id}: one job's record (not its /content)."""
    parts = path.strip("/").split("/")
    return len(parts) == 3 and parts[:2] == ["v1", "videos"] and parts[2] not in ("", "sync")


def failed_job_read_as_ok(send: Send) -> Send:
    """A failed job's record goes out as 200 with `status: "failed"`, as the OpenAI API answers it.

    vLLM-Omni answers it with the job's own error code (4xx/5xx), which makes the SDK's
    `retrieve` / `create_and_poll` raise instead of returning the failed job. The body is unchanged.
    """

    def rewrite(status: int, body: bytes) -> tuple[int, bytes]:
        try:
            failed = status >= 400 and json.loads(body).get("status") == "failed"
        except (ValueError, AttributeError):
            failed = False
        return (200 if failed else status), body

    return rewritten_response(send, rewrite)


def bad_request(exc: RequestError) -> JSONResponse:
    message = f"Helios request: {exc}"
    error = {"message": message, "type": "BadRequestError", "param": exc.field, "code": 400}
    return JSONResponse({"error": error}, status_code=400)


class HeliosRequestCheck:
    """ASGI middleware: refuse a Helios video request the core would refuse, before it is queued."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        folder = helios_folder(scope.get("app"))
        if folder is None:
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] in SLEEP_ROUTES:
            return await bad_request(RequestError(scope["path"], SLEEP_REFUSAL))(scope, receive, send)
        if scope["method"] == "GET" and is_job_path(scope["path"]):
            return await self.app(scope, receive, failed_job_read_as_ok(send))
        if not self.applies(scope):
            return await self.app(scope, receive, send)
        messages, complete = await read_body(receive, MAX_CHECKED_BODY)
        if complete:
            app = scope.get("app")
            error = await self.check(scope, messages, folder, served_sp_degree(app), served_lora_paths(app))
            if error is not None:
                return await bad_request(error)(scope, receive, send)
            if scope["path"] == SYNC_ROUTE:  # the route awaits the job without watching the client
                return await run_until_disconnect(self.app, scope, messages, receive, send)
        await self.app(scope, replay(messages, receive), send)

    @staticmethod
    def applies(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in VIDEO_ROUTES:
            return False
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        return content_type.startswith(FORM_TYPES)

    @staticmethod
    async def check(scope: Scope, messages: list[Message], folder: Path, sp_degree: int, loras: list[str]) -> RequestError | None:
        try:
            form = await Request(scope, replay(messages, end_of_body)).form(max_part_size=MAX_CHECKED_BODY)
        except Exception:  # a malformed form: the route answers it with its own error
            return None
        try:
            refused = refused_form_field(list(form.multi_items()))
            if refused is not None:
                return refused
            check_lora_field(form.get(LORA_FIELD), loras, folder)
            parsed = await form_request(form)
            if parsed is None:
                return None
            request, _ = to_generation_request(*parsed)
            plan_for_folder(folder, request, sp_degree)
        except RequestError as exc:
            return exc
        finally:
            await form.close()
        return None
