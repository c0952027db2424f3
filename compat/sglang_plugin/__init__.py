"""The pre-0.2 name of `helios_sglang` (as in `SGLANG_EXTERNAL_MODEL_PACKAGE=sglang_plugin`): imports `helios_sglang`, with a FutureWarning, for one release."""

from helios_backends.renamed import forward

forward(__name__, "helios_sglang")
