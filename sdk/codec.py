"""Step results as JSON: checked when the checkpoint is written, rebuilt from the step's return type.

A result that cannot be stored fails *at checkpoint time* with the path to the offending value
(``$.items[2].when``), never later at resume time. Pydantic models are dumped in JSON mode and
rebuilt on replay from the step function's return annotation (or an explicit ``returns=``).
"""

from __future__ import annotations

import builtins
import importlib
import json
import math
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from .errors import ResultNotSerializable, StepFailed


def to_json_value(value: Any, path: str = "$") -> Any:
    """``value`` as plain JSON data, or :class:`ResultNotSerializable` naming the path to the culprit."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ResultNotSerializable(f"{path}: {value!r} is not a JSON number")
        return value
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception as exc:  # noqa: BLE001 - pydantic raises several kinds; all mean "not JSON"
            raise ResultNotSerializable(f"{path}: {type(value).__name__} cannot be dumped as JSON: {exc}") from None
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ResultNotSerializable(f"{path}: dict key {key!r} is not a string")
            out[key] = to_json_value(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise ResultNotSerializable(f"{path}: {type(value).__qualname__} is not JSON-serialisable")


_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def encode(value: Any) -> str:
    return _ENCODE(to_json_value(value))


def return_type(function: Callable[..., Any]) -> Any:
    """The declared return type of ``function``, or None when it declares none we can use."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations mean "untyped", not an error
        return None
    hint = hints.get("return")
    if hint is None or hint is type(None) or hint is Any:
        return None
    return hint


def decode(text: str | None, returns: Any = None) -> Any:
    data = None if text is None else json.loads(text)
    if returns is None:
        return data
    return TypeAdapter(returns).validate_python(data)


def encode_error(error: BaseException) -> str:
    kind = type(error)
    try:
        args = to_json_value(list(error.args))
    except ResultNotSerializable:
        args = None
    return json.dumps({"type": f"{kind.__module__}:{kind.__qualname__}", "message": str(error), "args": args})


def decode_error(text: str) -> BaseException:
    """Rebuild a recorded error: its own class when that imports and accepts its args, else StepFailed."""
    data = json.loads(text)
    kind, message, args = data["type"], data["message"], data.get("args")
    module_name, _, qualname = kind.partition(":")
    try:
        module = builtins if module_name == "builtins" else importlib.import_module(module_name)
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part)
        if isinstance(found, type) and issubclass(found, Exception) and args is not None:
            return found(*args)
    except Exception:  # noqa: BLE001 - any failure to rebuild falls back to the generic error
        pass
    return StepFailed(f"{kind}: {message}", error_type=kind)
