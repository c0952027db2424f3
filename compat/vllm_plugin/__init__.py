"""The pre-0.2 name of `helios_vllm` (as in `--middleware vllm_plugin.http.HeliosRequestCheck`): imports `helios_vllm`, with a FutureWarning, for one release."""

from helios_backends.renamed import forward

forward(__name__, "helios_vllm")
