"""Helios pipeline config and sampling parameters for SGLang-Diffusion.

One pair serves Base, Mid and Distilled: the variants differ only in sampling defaults, which
the core reads from the checkpoint folder (see request_mapping.py). The class names contain
"Helios" because SGLang keys sequence sharding on that name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, ClassVar

from sglang.multimodal_gen.configs.pipeline_configs.base import PipelineConfig
from sglang.multimodal_gen.configs.pipeline_configs.model_deployment_config import ModelDeploymentConfig
from sglang.multimodal_gen.configs.sample.sampling_params import SamplingParams
from sglang.multimodal_gen.configs.task_type import ModelTaskType

from helios_backends.config import VARIANT_DEFAULTS, TransformerConfig, uses_cfg_by_default
from helios_backends.errors import CheckpointError, RequestError
from helios_backends.loading import plan_for_folder, read_configs

from .front_door import check_engine_options, check_media_paths, stop_if_deleted
from .offload import core_offload
from .parallel import check_parallel_settings, served_sp_degree
from .request_mapping import HELIOS_FIELDS, explicit_fields_of, to_generation_request

_DEFAULTS = VARIANT_DEFAULTS["base"]


@dataclass
class HeliosCoreConfig(PipelineConfig):
    """Server-level settings; the model itself is described by its folder's json files.

    SGLang's default task stays T2V: I2V and V2V are chosen per request by `task` or by an
    `image` / `video` in the request body. TI2V and V2V are declared so that SGLang accepts its
    own `input_reference` upload (image -> TI2V, video -> V2V), which the plugin reads
    (front_door.engine_media).
    """

    task_type: ModelTaskType = ModelTaskType.T2V
    supported_task_types: ClassVar[tuple[ModelTaskType, ...]] = (ModelTaskType.T2V, ModelTaskType.TI2V, ModelTaskType.V2V)
    dit_precision: str = "bf16"
    vae_precision: str = "fp32"
    vae_tiling: bool = False
    vae_sp: bool = False

    def get_model_deployment_config(self) -> ModelDeploymentConfig:
        """SGLang turns CFG parallel on by itself on >= 2 GPUs; only for variants that run CFG.

        Base and Mid guide every default request (CFG 5.0), so their two branches go to two
        ranks; Distilled has no second branch, so SGLang gives its GPUs to sequence parallel.
        """
        try:
            uses_cfg = uses_cfg_by_default(read_configs(self.model_path).pipeline.variant)
        except CheckpointError:
            uses_cfg = False  # not a local Helios folder (a hub name before download): no guess
        return ModelDeploymentConfig(auto_enable_cfg_parallel=uses_cfg)

    def validate_server_args(self, server_args: Any) -> None:
        """Refuse, at start-up, parallel and offload settings the core cannot honour."""
        check_parallel_settings(server_args)
        check_engine_options(server_args)
        folder = Path(server_args.model_path)
        num_layers = read_configs(folder).transformer.num_layers if folder.is_dir() else TransformerConfig().num_layers
        core_offload(server_args, num_layers)

    def resolve_task_type(self, requested=None, *, data_type=None, has_image=False, has_video=False):
        # V2V passes: SGLang itself resolves a video upload to V2V and asks again with it.
        if requested is not None and ModelTaskType.parse(requested) == ModelTaskType.I2V:
            raise RequestError(
                "task_type",
                "Helios takes the task as `task` (t2v, i2v or v2v) with the image or video in the request "
                "body as base64 `image` / `video`",
            )
        return super().resolve_task_type(requested, data_type=data_type, has_image=has_image, has_video=has_video)


@dataclass
class HeliosSamplingParamsBase(SamplingParams):
    """SGLang's shared sampling fields with Helios' defaults, and the request hooks.

    `HeliosCoreSamplingParams` below adds every other GenerationRequest field (HELIOS_FIELDS)
    with a None default (= the checkpoint variant's default), so the list is the core's own.
    Values arrive as the client sent them (JSON or form values) and are type-checked by the core:
    image / video: base64 (or data: URL) PNG/JPEG/WebP image and mp4/webm video; pyramid_steps:
    steps per pyramid stage (Mid/Distilled); history_sizes: (long, mid, short);
    image_noise_sigma / video_noise_sigma: (min, max); prompt_schedule: interactive prompts as
    [{"start_chunk": 0, "prompt": "..."}, ...].
    """

    height: int | None = _DEFAULTS.height
    width: int | None = _DEFAULTS.width
    num_frames: int = _DEFAULTS.num_frames
    fps: int = _DEFAULTS.fps
    num_inference_steps: int | None = None
    # Base/Mid's scale; only a user-set value reaches the core. SGLang reads the default to decide
    # whether the model "uses CFG" (see HeliosCoreConfig.get_model_deployment_config).
    guidance_scale: float = _DEFAULTS.guidance_scale
    # Helios' training resolution; SGLang's warm-up renders it and warns about other sizes.
    supported_resolutions: list[tuple[int, int]] | None = field(
        default_factory=lambda: [(_DEFAULTS.width, _DEFAULTS.height)], metadata={"batch_sig_exclude": True}
    )
    # SGLang rounds num_frames to its VAE/GPU alignment (99 -> 97); the core plans Helios' chunks
    # from the frames asked for, so the request reaches it unchanged.
    adjust_frames: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_media_paths(self)  # only this request's own upload, never a path the client named

    @classmethod
    def lower_video_request_kwargs(cls, request: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """No num_frames and no seconds: the checkpoint variant's length (Base/Mid 99, Distilled
        240), not SGLang's generic fps x 4 s = 96, which its video API fills in otherwise (its
        request model defaults `seconds` to 4, so only a client-sent `seconds` counts)."""
        if request.num_frames is None and "seconds" not in request.model_fields_set:
            kwargs["num_frames"] = None  # build_sampling_params drops None: the field stays unset
        return kwargs

    @classmethod
    def video_request_extra_fields(cls) -> frozenset[str]:
        return frozenset(HELIOS_FIELDS)

    def validate_video_final_outputs(self, output_paths: list[str], req: Any) -> dict[str, str]:
        """A job deleted after its last step: refused here, so SGLang removes the video it wrote."""
        stop_if_deleted(getattr(req, "request_id", None))
        return super().validate_video_final_outputs(output_paths, req)

    def prepare_video_request_for_queue(self, req: Any) -> None:
        """Check the request against the served checkpoint and its sequence-parallel degree before
        it is queued (-> HTTP 400).

        Runs in the HTTP server and in `sglang generate`'s client process; where no served
        folder is known there (the CLI), the worker's plan stage is the check.
        """
        request = to_generation_request(self, explicit_fields_of(req))
        served = served_checkpoint()
        if served is not None:
            folder, sp_degree = served
            plan_for_folder(folder, request, sp_degree)


# The class name contains "Helios" (SGLang keys sequence sharding on it); its fields beyond the
# base's are the core's request fields SGLang does not carry itself.
HeliosCoreSamplingParams = make_dataclass(
    "HeliosCoreSamplingParams",
    [(name, Any, None) for name in HELIOS_FIELDS],
    bases=(HeliosSamplingParamsBase,),
    namespace={"__module__": __name__, "__doc__": "Every GenerationRequest option of the core; None = the checkpoint variant's default."},
)


def served_checkpoint() -> tuple[str, int] | None:
    """(folder, Ulysses x Ring degree) from SGLang's global server args; None without a local folder."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        server_args = get_global_server_args()
    except ValueError:
        return None
    path = server_args.model_path
    return (path, served_sp_degree(server_args)) if Path(path).is_dir() else None
