"""torch.export archives: refuse every entry whose loading could run code, then load.

``torch.export.load`` unpickles several kinds of entries (with ``weights_only=False`` or
plain ``pickle.loads``), gives the symbolic shape strings of its JSON to ``sympy.sympify``
(which calls ``eval``) and loads AOTInductor entries as native libraries, and
``ExportedProgram.module()`` compiles the archive's ``guards_code`` strings with ``exec``.
:func:`load_exported` reads the file once into memory, :func:`check_pt2` inspects those
bytes with torch's own zip reader, ``torch.export.load`` then reads the same bytes, and the
module is built with ``check_guards=False``, so no guard string is ever compiled.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import os
import re
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sympy
import torch
import torch.utils._sympy.functions as torch_sympy_functions
from torch import nn

from attrbound import models
from attrbound.errors import AttrboundError
from attrbound.intake.files import HOW_TO_SAVE, some


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """``torch.export.load(path).module()``, after :func:`check_pt2` passed on its bytes.

    The file is read once; the checked bytes are the ones ``torch.export.load`` reads. The
    program must take one tensor and return one, and must have been exported in eval mode
    (no op with ``training=True`` / ``train=True``, no random op). It is moved with
    ``torch.export.passes.move_to_device_pass``. ``module.config`` is ``{"input_shape": S}``
    when the example shape after the batch is static (else ``{}``), so that attrbound checks
    input shapes with a clear sentence. The returned ``GraphModule`` is built with
    ``check_guards=False`` (input shapes are still checked by its pre-hook); its ``eval()``
    is a no-op, since the graph's train/eval behaviour was fixed at export, and ``train()``
    raises. Exported graphs support ``torch.func`` transforms (grad of grad, jvp of grad,
    vmap) like the module they came from.
    """
    path = Path(path)
    if not path.is_file():
        raise AttrboundError(f"no model file at {path}.")
    data = path.read_bytes()
    check_pt2(data, str(path))
    try:
        ep = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # the deserialiser raises many types for malformed archives
        raise AttrboundError(f"{path} is not a loadable torch.export archive ({exc}).") from None
    _check_program(ep, str(path))
    if torch.device(device) != torch.device("cpu"):
        ep = torch.export.passes.move_to_device_pass(ep, device)
    shape = _example_shape(ep)
    module = ep.module(check_guards=False)
    module.config = {"input_shape": shape} if shape else {}
    module.train = types.MethodType(_train_fixed, module)  # type: ignore[method-assign]
    del module.eval  # nn.Module.eval calls self.train(False)
    return models.freeze(module)


def _example_shape(ep: Any) -> list[int] | None:
    """S of the input [B, *S] when every dimension after the batch is static, else None."""
    name = ep.graph_signature.user_inputs[0]
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            dims = getattr(node.meta.get("val"), "shape", ())[1:]
            return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None
    return None


def _train_fixed(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise AttrboundError(
            "an exported graph cannot be put in training mode; its behaviour was fixed when "
            "it was exported."
        )
    return nn.Module.train(self, False)


def check_pt2(data: bytes, name: str = "the archive") -> None:
    """Refuse a ``.pt2`` whose loading could run code; pass a plain ``torch.export.save`` one.

    ``torch.export.load`` deserialises (torch 2.13, ``torch/export/pt2_archive/_package.py``
    and ``torch/_export/serde/serialize.py``): ``models/<m>.json`` (the graph, JSON), the
    weight and constant configs (JSON), raw tensor bytes ``weight_<i>`` / ``tensor_<i>`` (no
    pickle), and these pickles, each of which this check refuses or verifies:

    - ``use_pickle`` weights and tensor constants: ``torch.load(weights_only=False)``: refused;
    - ``opaque_obj_*`` constants (``pickle.loads``) and ``custom_obj_*`` ones (the TorchScript
      unpickler): refused;
    - legacy ``data/weights/<m>.pt`` / ``data/constants/<m>.pt`` and the sample inputs
      ``data/sample_inputs/<m>.pt``: ``torch.load(weights_only=True)`` with a fallback to
      ``weights_only=False`` when that fails: legacy files are refused; the sample inputs
      must load with ``weights_only=True`` here (the same bytes then never fall back);
    - ``data/aotinductor/`` (native shared libraries), executorch and MTIA payloads, and the
      pre-2.8 zip layout (a top-level ``version`` entry): refused, as is any unknown entry.

    In the JSON, every ``expr_str`` (given to ``sympy.sympify``) must be an arithmetic or
    relational expression whose calls are sympy classes, and every node target must resolve
    to a torch operator (``OpOverload`` or higher-order operator) or a symbolic-shape
    builtin. The archive must hold exactly one program, named ``model``.
    """
    reader, records = _open(data, name)
    programs = sorted(r for r in records if r.startswith("models/"))
    if programs != ["models/model.json"]:
        raise AttrboundError(
            f"{name} must hold one exported program, models/model.json (as torch.export.save "
            f"writes), but holds {programs or 'none'}."
        )
    allowed = set(_FIXED_RECORDS)
    for entry, folder, prefix in _PAYLOADS:
        allowed |= _payload_files(reader, records, name, entry, folder, prefix)
    bad = sorted(r for r in records - allowed if not r.startswith("extra/"))
    if bad:
        raise AttrboundError(
            f"{name} contains {some(bad)}, which attrbound does not accept: torch.export.load "
            "would unpickle such entries or load them as native code."
        )
    if _SAMPLE_INPUTS in records:
        try:
            torch.load(io.BytesIO(reader.get_record(_SAMPLE_INPUTS)), weights_only=True)
        except Exception:  # weights_only refusals and corrupt data raise many types
            raise AttrboundError(
                f"{name} has sample inputs that are not plain tensors, which torch.export.load "
                "would unpickle (pickles can run code); attrbound refuses it."
            ) from None
    for problem in _json_problems(_json(reader.get_record("models/model.json"), name)):
        raise AttrboundError(f"{name} is refused: its graph {problem}.")


_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
#: the records of every torch.export.save archive, besides the raw tensors
_FIXED_RECORDS = (
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    _SAMPLE_INPUTS,
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
)
#: (entry kind, folder, file prefix) of the raw tensors the two payload configs list
_PAYLOADS = (("weights", "data/weights/", "weight_"), ("constants", "data/constants/", "tensor_"))


def _open(data: bytes, name: str) -> tuple[Any, set[str]]:
    """torch's own zip reader on ``data`` (the one torch.export.load uses) and its records;
    refuses pickles, torch.save files and the pre-2.8 layout (top-level entries, which
    torch.export.load's fallback reads with ``zipfile`` and unpickles)."""
    if not data.startswith(b"PK\x03\x04"):
        kind = "a pickle" if data[:1] == b"\x80" else "not a zip archive"
        raise AttrboundError(
            f"{name} is {kind}, not a torch.export archive; attrbound never unpickles model "
            f"files: {HOW_TO_SAVE}."
        )
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = set(reader.get_all_records())
        top_level = [n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if "/" not in n]
    except (RuntimeError, zipfile.BadZipFile, ValueError):
        raise AttrboundError(f"{name} is not a readable torch.export archive.") from None
    if top_level or "data.pkl" in records:
        raise AttrboundError(
            f"{name} is a torch.save file or an old torch.export layout, whose loading "
            f"unpickles its contents; attrbound refuses it: {HOW_TO_SAVE}."
        )
    return reader, records


def _payload_files(
    reader: Any, records: set[str], name: str, entry: str, folder: str, prefix: str
) -> set[str]:
    """The raw tensor files the weights / constants config lists; refuses a missing config
    (the legacy layout pickles them) and any entry that is pickled or not a raw tensor."""
    config_name = f"{folder}model_{entry}_config.json"
    if config_name not in records:
        raise AttrboundError(
            f"{name} has no {config_name} (an older layout, whose loading unpickles its "
            f"{entry}); re-save it with torch.export.save in torch >= 2.8."
        )
    files = set()
    for fqn, meta in (_json(reader.get_record(config_name), name).get("config") or {}).items():
        file = meta.get("path_name") if isinstance(meta, dict) else None
        if (
            not isinstance(file, str)
            or not re.fullmatch(re.escape(prefix) + r"\d+", file)
            or meta.get("use_pickle") is not False
            or not isinstance(meta.get("tensor_meta"), dict)
        ):
            raise AttrboundError(
                f"{name} stores the {entry[:-1]} {fqn!r} as a pickled object, which "
                "torch.export.load would unpickle (pickles can run code); attrbound accepts "
                "only raw tensors."
            )
        files.add(folder + file)
    return files


def _json(raw: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AttrboundError(f"{name} holds a JSON entry that is not valid JSON.") from None
    if not isinstance(value, dict):
        raise AttrboundError(f"{name} holds a JSON entry that is not an object.")
    return value


def _json_problems(tree: Any) -> Iterator[str]:
    """What in the exported program's JSON could run code: bad expressions and targets."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            expr = node.get("expr_str")
            if expr is not None and not (isinstance(expr, str) and _safe_sympy(expr)):
                yield f"has the symbolic expression {str(expr)[:80]!r}, which sympy would eval"
            target = node.get("target")
            if isinstance(target, str) and isinstance(node.get("inputs"), list):
                if not _allowed_target(_resolve_target(target)):
                    yield f"calls {target[:80]!r}, which is not a torch operator"
            stack.extend(node.values())


#: the builtins a symbolic-shape node may call (``torch._export.serde.serialize._SYM_OPS``)
_SYM_BUILTINS = (
    *(getattr(operator, f) for f in "getitem add sub mul truediv floordiv mod pow neg pos".split()),
    *(getattr(operator, f) for f in "eq ne lt le gt ge and_ or_ lshift rshift".split()),
    math.trunc,
    *(getattr(torch, f"sym_{f}") for f in "int float max min not ite sqrt sum".split()),
)


def _resolve_target(target: str) -> Any:
    """The object the deserialiser would call for ``target`` (its lookup rule), or None."""
    roots = {"_operator": operator, "torch": torch, "math": math}
    head, *names = target.split(".")
    obj: Any = roots.get(head)
    for name in names if obj is not None else ():
        if name.startswith("__") or not hasattr(obj, name):
            return None
        obj = getattr(obj, name)
    return obj


def _allowed_target(obj: Any) -> bool:
    if isinstance(obj, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    return any(obj is f for f in _SYM_BUILTINS)


_SAFE_AST = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Name,
    ast.Call, ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip


def _safe_sympy(text: str) -> bool:
    """True if ``sympy.sympify(text)`` only builds an expression: arithmetic, comparisons,
    constants, names, and calls whose callee is a sympy class (Symbol, Max, FloorDiv, ...)
    with constant keyword values; no attribute, subscript, lambda or other call."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_AST):
            return False
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return False
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and _sympy_class(node.func.id)
        ):
            return False
        if isinstance(node, ast.keyword) and not isinstance(node.value, ast.Constant):
            return False
    return True


def _sympy_class(name: str) -> bool:
    for namespace in (sympy, torch_sympy_functions):
        value = getattr(namespace, name, None)
        if isinstance(value, type) and issubclass(value, sympy.Basic):
            return True
    return False


def _check_program(ep: Any, name: str) -> None:
    """One tensor in, one out, exported in eval mode: no op called with ``training=True`` /
    ``train=True`` (BatchNorm, dropout), and no random op (one tagged
    ``nondeterministic_seeded`` that has no such flag and no ``dropout_p`` of 0)."""
    signature = ep.graph_signature
    if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise AttrboundError(
            f"{name} takes {len(signature.user_inputs)} inputs and returns "
            f"{len(signature.user_outputs)} outputs; attrbound needs one tensor in "
            "([B, *S]) and one out (logits [B, K])."
        )
    for gm in ep.graph_module.modules():
        for node in getattr(getattr(gm, "graph", None), "nodes", ()):
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                if _training_or_random(node):
                    raise AttrboundError(
                        f"{name} was exported in training mode or draws random numbers "
                        f"({node.target}); call model.eval() before torch.export.export."
                    )


def _training_or_random(node: Any) -> bool:
    schema = node.target._schema.arguments
    args = {a.name: a.default_value for a in schema if a.has_default_value()}
    args.update(zip((a.name for a in schema), node.args, strict=False))
    args.update(node.kwargs)
    flags = [args[k] for k in ("training", "train") if k in args]
    if flags:
        return any(f is True for f in flags)
    seeded = torch.Tag.nondeterministic_seeded in node.target.tags
    return seeded and args.get("dropout_p") != 0
