"""Parameter specs: the typed, bounded inputs a workflow exposes, and checking values."""

from __future__ import annotations

import math
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ParamType = Literal["string", "int", "float", "bool", "seed", "image", "model"]
PARAM_TYPES: tuple[str, ...] = ("string", "int", "float", "bool", "seed", "image", "model")

SEED_MAX = 0xFFFFFFFFFFFFFFFF
"""KSampler's own upper bound for `seed`."""
DEFAULT_MAX_LENGTH = 10_000
"""Characters of a string parameter (a prompt) when its contract gives no `max_length`."""
MAX_NAME_LENGTH = 1024
"""Characters of an image or model file name."""
RANDOM_SEED_LIMIT = 2**53
"""Random seeds stay below this so that every JSON reader (JavaScript too) keeps them exact."""

CEILING_INPUTS: dict[str, tuple[str, ...]] = {
    "width": ("width",),
    "height": ("height",),
    "steps": ("steps",),
    "batch_size": ("batch_size", "amount"),
    "frames": ("video_frames", "frames", "length", "frame_count", "num_frames"),
}
"""Kinds of parameter with a fleet-wide ceiling (settings `limits.max_<kind>`), by the graph
inputs they set (or their own name)."""


def ceiling_kind(spec: ParamSpec) -> str | None:
    """The `CEILING_INPUTS` kind of a numeric parameter, or None."""
    if spec.type not in ("int", "float"):
        return None
    inputs = {target.input for target in spec.targets} | {spec.name}
    for kind, names in CEILING_INPUTS.items():
        if inputs & {kind, *names}:
            return kind
    return None


_JSON_TYPES = {
    "string": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "seed": "integer",
    "image": "string",
    "model": "string",
}


class Target(BaseModel):
    """One place a parameter's value goes: an input of a graph node."""

    model_config = ConfigDict(frozen=True)

    node: str
    """The graph node id (after resolving a `_meta.title`)."""
    input: str
    ref: str = ""
    """The node as the contract wrote it (a title or an id), for messages."""

    def label(self) -> str:
        if self.ref and self.ref != self.node:
            return f"{self.node} ({self.ref!r}).{self.input}"
        return f"{self.node}.{self.input}"


class ParamSpec(BaseModel):
    """One exposed parameter of a workflow."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: ParamType
    description: str = ""
    default: Any = None
    """The contract's default; None when the contract gives none (the graph's value applies)."""
    minimum: float | int | None = None
    maximum: float | int | None = None
    multiple_of: float | int | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int | None = None
    """For `string` parameters: at most this many characters (None: `DEFAULT_MAX_LENGTH`)."""
    folder: str | None = None
    """For `model` parameters: the ComfyUI model folder (`checkpoints`, `loras`, …)."""
    targets: tuple[Target, ...] = ()
    graph_value: Any = None
    """The graph's own literal value at the first target (None when it is a link or absent)."""

    def check(self, value: Any) -> Any:
        """Return `value` in this parameter's type, or raise ValueError saying what is allowed."""
        checker = _CHECKERS[self.type]
        return checker(self, value)

    @property
    def longest(self) -> int:
        """The most characters a string value may have."""
        return self.max_length or DEFAULT_MAX_LENGTH

    def random_seed(self) -> int:
        """A random seed inside this parameter's bounds (used for -1 / absent)."""
        low = max(int(self.minimum or 0), 0)
        high = min(
            int(self.maximum if self.maximum is not None else SEED_MAX), RANDOM_SEED_LIMIT - 1
        )
        return low + secrets.randbelow(high - low + 1)

    def parse_text(self, text: str) -> Any:
        """Turn a command-line string (`--param width=512`) into this parameter's type."""
        if self.type in ("int", "seed"):
            try:
                return int(text)
            except ValueError:
                return text  # check() reports it with the allowed range
        if self.type == "float":
            try:
                return float(text)
            except ValueError:
                return text
        if self.type == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            return text
        return text

    def allowed(self) -> str:
        """Human words for what this parameter accepts."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        words = {
            "string": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "seed": "an integer seed (-1 = random)",
            "image": "the name of an image in the node's input folder",
            "model": f"a model file name{f' in {self.folder}' if self.folder else ''}",
        }[self.type]
        if self.type == "seed" and self.maximum is not None:
            words += f" in {_num(self.minimum or 0)}..{_num(self.maximum)}"
        elif self.minimum is not None or self.maximum is not None:
            low = "-inf" if self.minimum is None else _num(self.minimum)
            high = "inf" if self.maximum is None else _num(self.maximum)
            words += f" in {low}..{high}"
        if self.multiple_of is not None:
            words += f", a multiple of {_num(self.multiple_of)}"
        return words

    def json_schema(self, default: Any) -> dict[str, Any]:
        """The JSON-schema property for this parameter, with `default` the effective default."""
        schema: dict[str, Any] = {"type": _JSON_TYPES[self.type], "title": self.name}
        if self.description:
            schema["description"] = self.description
        if default is not None:
            schema["default"] = default
        if self.type == "seed":
            schema["minimum"] = -1
            schema["maximum"] = SEED_MAX if self.maximum is None else self.maximum
        else:
            if self.minimum is not None:
                schema["minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        if self.multiple_of is not None:
            schema["multipleOf"] = self.multiple_of
        if self.type == "string":
            schema["maxLength"] = self.longest
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.type in ("seed", "image", "model"):
            schema["x-comfyfleet-type"] = self.type
        if self.folder:
            schema["x-comfyfleet-model-folder"] = self.folder
        return schema


def _num(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _wrong_type(spec: ParamSpec, value: Any) -> ValueError:
    return ValueError(f"{value!r} ({_type_name(value)}) is not {spec.allowed()}")


def _bounds(spec: ParamSpec, value: float | int) -> None:
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(
            f"{_num(value)} is below the minimum {_num(spec.minimum)} (allowed: {spec.allowed()})"
        )
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(
            f"{_num(value)} is above the maximum {_num(spec.maximum)} (allowed: {spec.allowed()})"
        )
    if spec.multiple_of:
        ratio = value / spec.multiple_of
        if not math.isclose(ratio, round(ratio), abs_tol=1e-9):
            raise ValueError(
                f"{_num(value)} is not a multiple of {_num(spec.multiple_of)} "
                f"(allowed: {spec.allowed()})"
            )


def _choices(spec: ParamSpec, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{value!r} is not {spec.allowed()}")


def _as_int(spec: ParamSpec, value: Any) -> int:
    if isinstance(value, bool):
        raise _wrong_type(spec, value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _wrong_type(spec, value)


def _check_int(spec: ParamSpec, value: Any) -> int:
    number = _as_int(spec, value)
    _bounds(spec, number)
    _choices(spec, number)
    return number


def _check_seed(spec: ParamSpec, value: Any) -> int:
    number = _as_int(spec, value)
    if number == -1:
        return number
    if number < 0:
        raise ValueError(f"{number} is not {spec.allowed()}")
    _bounds(spec, number)
    return number


def _check_float(spec: ParamSpec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(spec, value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number (allowed: {spec.allowed()})")
    _bounds(spec, number)
    _choices(spec, number)
    return number


def _check_bool(spec: ParamSpec, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(spec, value)
    return value


def _check_string(spec: ParamSpec, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(spec, value)
    if len(value) > spec.longest:
        raise ValueError(f"{len(value)} characters; at most {spec.longest} allowed")
    _choices(spec, value)
    return value


def _check_name(spec: ParamSpec, value: Any) -> str:
    """Image and model names: a relative file name, never a path out of the folder."""
    if not isinstance(value, str) or not value.strip():
        raise _wrong_type(spec, value)
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{len(value)} characters; a file name has at most {MAX_NAME_LENGTH}")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ValueError(f"{value!r} is not a plain relative file name (allowed: {spec.allowed()})")
    _choices(spec, value)
    return value


_CHECKERS = {
    "string": _check_string,
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "seed": _check_seed,
    "image": _check_name,
    "model": _check_name,
}
