"""Our Ascend path against the real torch-npu release's declared operator schemas.

The stand-in (tests/npu_standin.py) and NpuOps were written from the documentation; here they are
checked against what the torch-npu wheel matching our torch declares, read out of the wheel
without installing or importing it (installing it breaks `import torch` without CANN):
`torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml` holds the registered schema of every
op, `torch_npu/_op_plugin_docs.py` the accepted values of string arguments, and the package's
Python sources the `torch_npu.npu` functions we call. The wheel is fetched by
`scripts/setup-env npu-wheels` (requirements/npu-wheels.txt), like any other dependency.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from . import npu_standin

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
DOCS = "torch_npu/_op_plugin_docs.py"
OUR_OPS = ROOT / "npu" / "ops.py"
OUR_DEVICE = ROOT / "npu" / "device.py"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: object  # REQUIRED when the schema gives none
    keyword_only: bool


REQUIRED = object()


def parse_default(text: str) -> object:
    """A schema default as the Python value a caller would pass."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    if text[0] in "'\"":
        return text[1:-1]
    return float(text) if any(c in text for c in ".e") else int(text)


def parse_schema(schema: str) -> tuple[str, list[Param]]:
    """`name(Type a, Type b=1., *, Type c=None) -> ...` -> (name, params)."""
    match = re.fullmatch(r"(\w+)\((.*)\)\s*->.*", schema.strip())
    assert match, schema
    name, args = match.groups()  # no op we read has list defaults, whose commas this split would cut
    params, keyword_only = [], False
    for arg in (a.strip() for a in args.split(",") if a.strip()):
        if arg == "*":
            keyword_only = True
            continue
        declaration, _, default = arg.partition("=")
        type_, pname = declaration.rsplit(" ", 1)
        params.append(Param(pname, type_, parse_default(default) if default else REQUIRED, keyword_only))
    return name, params


@dataclass(frozen=True)
class Release:
    version: str
    schemas: dict[str, str]  # op -> its default overload's schema text
    docs: str
    npu_sources: str  # torch_npu/npu/*.py, concatenated


@pytest.fixture(scope="module")
def release() -> Release:
    folder = subprocess.run([str(ROOT / "scripts" / "setup-env"), "npu-wheels"], capture_output=True, text=True, check=True)
    (wheel,) = Path(folder.stdout.strip()).glob("torch_npu-*.whl")
    with zipfile.ZipFile(wheel) as z:
        schemas = {}
        for line in z.read(SCHEMAS).decode().splitlines():
            match = re.match(r"\s*func:\s*(\w+)\(", line)  # `name.overload(` lines are other overloads
            if match:
                schemas[match.group(1)] = line.split("func:", 1)[1]
        docs = z.read(DOCS).decode()
        sources = "\n".join(z.read(n).decode() for n in z.namelist() if n.startswith("torch_npu/npu/") and n.endswith(".py"))
    return Release(wheel.name.split("-")[1], schemas, docs, sources)


@dataclass(frozen=True)
class Call:
    op: str
    positional: int
    keywords: dict[str, object]  # literal values where the call gives a constant, else Ellipsis
    line: int


def our_calls() -> list[Call]:
    """Every `self.torch_npu.<op>(...)` call in npu/ops.py, read from the source."""
    calls = []
    for node in ast.walk(ast.parse(OUR_OPS.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "torch_npu":
                keywords = {k.arg: k.value.value if isinstance(k.value, ast.Constant) else ... for k in node.keywords}
                calls.append(Call(node.func.attr, len(node.args), keywords, node.lineno))
    return calls


def test_the_checked_release_matches_our_torch(release):
    assert release.version.split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]


def test_npu_ops_calls_three_fused_ops_and_the_reader_finds_them():
    assert {c.op for c in our_calls()} == {"npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul"}


def test_every_call_binds_to_the_declared_schema(release):
    for call in our_calls():
        _, params = parse_schema(release.schemas[call.op])
        positional = [p for p in params if not p.keyword_only]
        where = f"npu/ops.py:{call.line} {call.op}"
        assert call.positional <= len(positional), f"{where}: {call.positional} positional arguments, declared {len(positional)}"
        names = [p.name for p in params]
        for keyword in call.keywords:
            assert keyword in names, f"{where}: keyword {keyword!r} not declared (declared: {names})"
            assert names.index(keyword) >= call.positional, f"{where}: {keyword!r} given twice"
        given = set(names[: call.positional]) | set(call.keywords)
        missing = [p.name for p in params if p.default is REQUIRED and p.name not in given]
        assert not missing, f"{where}: required {missing} not given"


def documented_values(docs: str, op: str, param: str) -> str:
    """The docs' description line of `param` in `op`'s section."""
    start = docs.index(f"torch_npu.{op}(")
    section = docs[start : docs.index('"""', start)]
    return next(line for line in section.splitlines() if line.strip().startswith(f"{param}"))


@pytest.mark.parametrize(("op", "param"), [("npu_fusion_attention", "input_layout"), ("npu_rotary_mul", "rotary_mode")])
def test_string_arguments_we_pass_are_values_the_docs_accept(release, op, param):
    line = documented_values(release.docs, op, param)
    values = {c.keywords[param] for c in our_calls() if c.op == op}
    assert values and all(isinstance(v, str) and v in line for v in values), (values, line)


@pytest.mark.parametrize("op", ["npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul"])
def test_the_standin_has_the_declared_signature(release, op):
    _, params = parse_schema(release.schemas[op])
    declared = [(p.name, "<required>" if p.default is REQUIRED else p.default) for p in params]
    signature = inspect.signature(getattr(npu_standin, op)).parameters.values()
    ours = [(p.name, "<required>" if p.default is inspect.Parameter.empty else p.default) for p in signature]
    assert ours == declared
    kinds = {p.name: p.kind for p in signature}
    assert all((kinds[p.name] == inspect.Parameter.KEYWORD_ONLY) == p.keyword_only for p in params)


def test_the_torch_npu_npu_functions_we_call_exist_in_the_release(release):
    used = set(re.findall(r"torch_npu\.npu\.(\w+(?:\.\w+)?)", OUR_DEVICE.read_text()))
    assert used == {"config.allow_internal_format", "set_compile_mode", "device_count", "current_device"}
    for name in ("set_compile_mode", "device_count", "current_device"):
        assert re.search(rf"^def {name}\(", release.npu_sources, re.M), name
    assert '"allow_internal_format"' in release.npu_sources
