"""SGLang's front door for Helios: a request names no server path or URL and no option the core lacks.

SGLang's HTTP API acts on some request fields before any pipeline code sees them: `reference_url`
is fetched, `output_path` becomes the job's folder (created), `perf_dump_path` is written, the
frame-interpolation and upscaling model paths are opened after the run. Only an ASGI middleware
sees a request that early, so `register_front_door` asks SGLang's plugin hook registry (the
official `sglang.multimodal_gen.plugins` mechanism) to add `HeliosFrontDoor` to the app that
`create_app` returns; SGLang offers no other way to add one. The middleware answers 400 naming the
first refused field, in SGLang's own error shape (`{"detail": "field: why"}`).

Media reach Helios in the body only: base64 / data-URL `image` and `video`, or a multipart
`input_reference` / `video_reference` upload. SGLang saves such an upload as
`<uploads>/<request id>_<name>` and hands the path on as `image_path` / `video_path`;
`engine_upload` accepts exactly that file (a client cannot know the request id in advance) and
reads it, and refuses every other path.

Engine options the core has no counterpart for (quantization, cache backends) are refused at
start-up by `check_engine_options`, naming the flag; so are the LoRA flags the core's merge cannot
honour (`--lora-merge-mode dynamic`, `--lora-alpha`, `--lora-weight-name`, `--lora-target-modules`).
SGLang's video requests carry no LoRA (such fields are refused); its LoRA routes (/v1/set_lora,
/v1/merge_lora_weights, /v1/unmerge_lora_weights) are served by the core (helios_sglang.lora), and the
front door reads a route's body first (`lora_route_error`): a path outside the server's
--lora-path, a bad adapter file or an option the core lacks is a 400 naming it, and the worker is
never asked.

SGLang's DELETE only forgets a job's record (it has no abort for a running job), so the front
door also records each DELETE as an empty marker file, and the worker's denoising loop
(`check_not_deleted`) stops that job before its next step; the job then writes no video.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from helios_backends.errors import GenerationCancelled, RequestError
from helios_backends.front_door import body_items, read_body, refused_field, replay, request_fields
from helios_backends.loading import read_configs

from .lora import ALPHA_FROM_FILE, ALWAYS_MERGED, MERGE_MODES, check_adapters, check_strength, check_target, configured_paths, requested_adapters

NEVER_OPENED = "this server never opens a path named in a request"
NEVER_FETCHED = "this server never fetches a URL named in a request; send the image as an `input_reference` upload or base64 `image`"
NOT_OFFERED = "not offered by the Helios core; leave it unset"
NO_REQUEST_LORA = "SGLang's video requests carry no LoRA; switch the server's adapters with POST /v1/set_lora (paths under its --lora-path)"
LORA_ROUTES = frozenset({"/v1/set_lora", "/v1/merge_lora_weights", "/v1/unmerge_lora_weights"})

# Request field -> why it is refused (SGLang's /v1/videos and the routes sharing its request model).
REFUSED_REQUEST_FIELDS = {
    "output_path": "the output folder is the server's --output-path; " + NEVER_OPENED,
    "perf_dump_path": NEVER_OPENED,
    "frame_interpolation_model_path": NEVER_OPENED,
    "upscaling_model_path": NEVER_OPENED,
    "reference_url": NEVER_FETCHED,
    "image_url": NEVER_FETCHED,
    "video_url": "this server never fetches a URL named in a request; upload the video as `input_reference` or send base64 `video`",
    "image_path": "send the image as an `input_reference` upload or base64 `image`; " + NEVER_OPENED,
    "video_path": "send the video as an `input_reference` upload or base64 `video`; " + NEVER_OPENED,
    "input_reference": "give an upload (multipart) or a data: URL; " + NEVER_OPENED,
    "enable_teacache": "cache backends are " + NOT_OFFERED,
    "enable_cache_dit": "cache backends are " + NOT_OFFERED,
    "cache_dit_params": "cache backends are " + NOT_OFFERED,
    "attention_backend_override": NOT_OFFERED,
    "skip_softmax_params": NOT_OFFERED,
    "cfg_gate_step": NOT_OFFERED,
    "use_diffusion_decoder": NOT_OFFERED,
    "diffusers_kwargs": NOT_OFFERED,
    "guidance_scale_2": NOT_OFFERED,
    "true_cfg_scale": NOT_OFFERED,
    "flow_shift": "Helios' shift comes from its scheduler config; " + NOT_OFFERED,
    "enable_frame_interpolation": NOT_OFFERED,
    "frame_interpolation_exp": NOT_OFFERED,
    "frame_interpolation_scale": NOT_OFFERED,
    "enable_upscaling": NOT_OFFERED,
    "upscaling_scale": NOT_OFFERED,
    "profile": NOT_OFFERED,
    "num_profiled_timesteps": NOT_OFFERED,
    "profile_all_stages": NOT_OFFERED,
    "lora": NO_REQUEST_LORA,
    "lora_path": NO_REQUEST_LORA,
    "lora_nickname": NO_REQUEST_LORA,
}
UPLOAD_FIELDS = frozenset({"input_reference", "video_reference"})
# ServerArgs field -> (flag, default): start-up options the core has no counterpart for.
REFUSED_SERVER_ARGS = {
    "quantization": ("--quantization", None),
    "component_quantizations": ("--component-quantizations", {}),
    "transformer_weights_path": ("--transformer-weights-path", None),
    "cache_dit_config": ("--cache-dit-config", None),
}
# ServerArgs field -> (flag, default, why): SGLang LoRA options the core's merge cannot honour.
REFUSED_LORA_ARGS = {
    "lora_alpha": ("--lora-alpha", None, ALPHA_FROM_FILE),
    "lora_weight_name": ("--lora-weight-name", None, "give --lora-path the .safetensors file itself"),
    "lora_target_modules": ("--lora-target-modules", None, "the core merges every module the adapter holds"),
}
MAX_CHECKED_BODY = 128 * 1024 * 1024


def _accepted_media(name: str, value: Any) -> bool:
    """An upload in an upload field, or a data: URL `input_reference` (media in the body)."""
    if name in UPLOAD_FIELDS and isinstance(value, UploadFile):
        return True
    return name == "input_reference" and isinstance(value, str) and value.startswith("data:")


def refused(items: list[tuple[str, Any]]) -> RequestError | None:
    """The first refused field of a request body's items, or None."""
    fields = [(n, v) for n, v in request_fields(items) if not _accepted_media(n, v)]
    for name, value in fields:
        if isinstance(value, dict) and name.split("[", 1)[0] == "input_reference":
            return RequestError(name, REFUSED_REQUEST_FIELDS["input_reference"])
    return refused_field(fields, REFUSED_REQUEST_FIELDS)


def bad_request(exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def _deleted_dir(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"helios-sglang-deleted-{port}"


def mark_deleted(port: int, job_id: str) -> None:
    """Record a DELETE of a job for the worker running it (SGLang has no abort message to send it)."""
    if job_id and "/" not in job_id and not job_id.startswith("."):
        folder = _deleted_dir(port)
        folder.mkdir(exist_ok=True)
        (folder / job_id).touch()


def check_not_deleted(request_id: str | None) -> None:
    """In the worker, between denoising steps: stop a job whose DELETE the front door recorded."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        marker = _deleted_dir(get_global_server_args().port) / str(request_id)
    except ValueError:  # no server in this process (the CLI)
        return
    if request_id and marker.exists():
        marker.unlink(missing_ok=True)
        raise GenerationCancelled(f"job {request_id} was deleted")


class HeliosFrontDoor:
    """ASGI middleware: a POST naming a refused field is answered 400 before SGLang reads it; a
    DELETE of a job is recorded for the worker, which stops it at its next denoising step."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        parts = scope.get("path", "").strip("/").split("/")
        if scope["type"] == "http" and scope["method"] == "DELETE" and len(parts) == 3 and parts[:2] == ["v1", "videos"]:
            mark_deleted(scope["server"][1] if scope.get("server") else 0, parts[2])
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        messages, complete = await read_body(receive, MAX_CHECKED_BODY)
        if not complete:
            message = f"request body: larger than {MAX_CHECKED_BODY // 2**20} MiB, the most this server reads"
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        items = await body_items(scope, messages, MAX_CHECKED_BODY)
        if scope.get("path") in LORA_ROUTES:
            error = lora_route_error(scope["path"], dict(items)) if items is not None else None
        else:
            error = refused(items) if items is not None else None
        if error is not None:
            return await bad_request(error)(scope, receive, send)
        await self.app(scope, replay(messages, receive), send)


def lora_route_error(route: str, body: dict[str, Any]) -> RequestError | None:
    """What the front door answers a LoRA route's JSON body with: a RequestError naming the field, or
    None to pass it on (a body SGLang's route itself refuses passes too: it answers 422)."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        server_args = get_global_server_args()
        if route != "/v1/set_lora":
            check_target(body.get("target", "all"))
            if route == "/v1/merge_lora_weights":
                check_strength(body.get("strength", 1.0))
            return None
        if "lora_nickname" not in body:
            return None
        adapters = requested_adapters(
            body["lora_nickname"], body.get("lora_path"), body.get("strength", 1.0), body.get("target", "all"),
            body.get("merge_mode"), body.get("lora_alpha"), configured_paths(server_args), loaded=None,
        )
        folder = Path(server_args.model_path)
        if folder.is_dir():
            check_adapters(adapters, read_configs(folder).transformer)
    except RequestError as exc:
        return exc
    except (TypeError, ValueError, AttributeError):  # not the route's types: its own validation answers
        return None
    return None


def add_front_door(app, server_args, *args, **kwargs) -> None:
    """AFTER hook on SGLang's `create_app`: put the front door in front of a Helios server's routes."""
    from .configs import HeliosCoreConfig

    if isinstance(server_args.pipeline_config, HeliosCoreConfig):
        app.add_middleware(HeliosFrontDoor)


def register_front_door() -> None:
    """Register `add_front_door` with SGLang's plugin hook registry (applied once per process)."""
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    HookRegistry.register("sglang.multimodal_gen.runtime.entrypoints.http_server.create_app", add_front_door, HookType.AFTER)


def check_engine_options(server_args: Any) -> None:
    """Refuse, at start-up, engine options the Helios core would otherwise ignore, naming the flag."""
    for name, (flag, default) in REFUSED_SERVER_ARGS.items():
        value = getattr(server_args, name, default)
        if value not in (default, None):
            raise ValueError(f"{flag} {value!r}: not supported by the Helios core (it runs the checkpoint's own weights); leave it unset")
    for name, (flag, default, why) in REFUSED_LORA_ARGS.items():
        value = getattr(server_args, name, default)
        if value not in (default, None):
            raise ValueError(f"{flag} {value!r}: not supported by the Helios core ({why}); leave it unset")
    mode = getattr(server_args, "lora_merge_mode", "auto")
    if mode not in MERGE_MODES:
        raise ValueError(f"--lora-merge-mode {mode}: {ALWAYS_MERGED} (accepted: {', '.join(MERGE_MODES)})")


def _upload_dirs() -> list[Path]:
    """Where SGLang saves this server's uploads: --input-save-path, or its per-request sglang_* temp folders."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        configured = get_global_server_args().input_save_path
    except ValueError:  # no server in this process (the CLI): no upload is accepted
        return []
    return [Path(configured if configured is not None else tempfile.gettempdir()).resolve()]


def _engine_upload(params: Any, name: str) -> Path | str | None:
    """`<name>_path` when it is SGLang's own upload for this request (its file) or a data: URL; None
    when unset. Any other path is refused: a client cannot name a file it does not know the request
    id of."""
    path = getattr(params, f"{name}_path", None)
    if isinstance(path, list) and len(path) == 1:
        path = path[0]
    if not path:
        return None
    if isinstance(path, str) and path.startswith("data:"):
        return path
    request_id = getattr(params, "request_id", None)
    if isinstance(path, str) and request_id:
        file = Path(path).resolve()
        folder = file.parent
        for uploads in _upload_dirs():
            if folder == uploads or (folder.parent == uploads and folder.name.startswith("sglang_")):
                if file.name.startswith(f"{request_id}_") and file.is_file():
                    return file
    raise RequestError(f"{name}_path", REFUSED_REQUEST_FIELDS[f"{name}_path"])


def check_media_paths(params: Any) -> None:
    """Refuse an image/video path that is not this request's own upload (SamplingParams.__post_init__)."""
    for name in ("image", "video"):
        _engine_upload(params, name)


def engine_media(params: Any) -> dict[str, bytes | str]:
    """`image` / `video` from this request's own upload (file bytes) or data: URL, for the core request."""
    media = {}
    for name in ("image", "video"):
        source = _engine_upload(params, name)
        if source is not None:
            media[name] = source.read_bytes() if isinstance(source, Path) else source
    return media
