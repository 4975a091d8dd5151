"""Prompt validation as ComfyUI 0.3.75 does it (`execution.validate_prompt`), over `/object_info`
entries instead of node classes: the same checks in the same order, the same error types,
messages and details, the same `node_errors` bookkeeping, and the same in-place conversion of
INT/FLOAT/STRING/BOOLEAN inputs. Differences: outputs and inputs are visited in the prompt's and
the class's order (ComfyUI iterates sets); custom validation exists only where a simulated class
declares it (`LoadImage`'s file check)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.simnode.catalog import ClassInfo

Graph = dict[str, dict[str, Any]]
Lookup = Callable[[str], ClassInfo | None]
CustomCheck = Callable[[Any], "bool | str"]
Checks = Mapping[str, Mapping[str, CustomCheck]]
"""class type → input name → check (True, False, or a reason), ComfyUI's `VALIDATE_INPUTS`."""

_Result = tuple[bool, list[dict[str, Any]], str]


@dataclass(frozen=True)
class Validation:
    """``ok``: may run; ``error``: the 400 answer's `error`; ``outputs``: the output nodes that
    passed; ``node_errors``: per failing node (also returned with a partly valid prompt)."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)


def error(type_: str, message: str, details: str = "") -> dict[str, Any]:
    """One ComfyUI error object."""
    return {"type": type_, "message": message, "details": details, "extra_info": {}}


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """Do a link's type and an input's type match (`T1,T2` unions overlap, `*` aside)?"""
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    accepted = {t.strip() for t in input_type.split(",")}
    return len(received & accepted) > 0


def _input_info(class_inputs: Mapping[str, Any], name: str) -> tuple[Any, str | None, Any]:
    for category in ("required", "optional", "hidden"):
        if name in class_inputs.get(category, {}):
            spec = class_inputs[category][name]
            return spec[0], category, spec[1] if len(spec) > 1 else {}
    return None, None, None


def full_type_name(cls: type) -> str:
    """``KeyError``, ``package.module.Error``: how ComfyUI names exception types."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _traceback() -> list[str]:
    return traceback.format_tb(sys.exc_info()[2])


def _convert(input_type: Any, value: Any) -> Any:
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    if input_type == "INT":
        value = int(value)
    if input_type == "FLOAT":
        value = float(value)
    if input_type == "STRING":
        value = str(value)
    if input_type == "BOOLEAN":
        value = bool(value)
    return value


def _check_value(name: str, value: Any, input_type: Any, extra: Any) -> dict[str, Any] | None:
    config = [input_type, extra]
    if "min" in extra and value < extra["min"]:
        return {
            "type": "value_smaller_than_min",
            "message": f"Value {value} smaller than min of {extra['min']}",
            "details": name,
            "extra_info": {"input_name": name, "input_config": config, "received_value": value},
        }
    if "max" in extra and value > extra["max"]:
        return {
            "type": "value_bigger_than_max",
            "message": f"Value {value} bigger than max of {extra['max']}",
            "details": name,
            "extra_info": {"input_name": name, "input_config": config, "received_value": value},
        }
    if isinstance(input_type, list) and value not in input_type:
        shown: Any = config
        listed = str(input_type)
        if len(input_type) > 20:
            listed, shown = f"(list of length {len(input_type)})", None
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: '{value}' not in {listed}",
            "extra_info": {"input_name": name, "input_config": shown, "received_value": value},
        }
    return None


class _Validator:
    def __init__(self, prompt: Graph, lookup: Lookup, checks: Checks) -> None:
        self.prompt = prompt
        self.lookup = lookup
        self.checks = checks
        self.validated: dict[str, _Result] = {}

    def _info(self, class_type: str) -> ClassInfo:
        info = self.lookup(class_type)
        if info is None:
            raise KeyError(class_type)
        return info

    def inputs(self, unique_id: str) -> _Result:
        if unique_id in self.validated:
            return self.validated[unique_id]
        inputs = self.prompt[unique_id]["inputs"]
        class_type = self.prompt[unique_id]["class_type"]
        class_inputs = self._info(class_type)["input"]
        names = [*class_inputs.get("required", {}), *class_inputs.get("optional", {})]
        checks = self.checks.get(class_type, {})
        errors: list[dict[str, Any]] = []
        valid = True
        for name in dict.fromkeys(names):
            input_type, category, extra = _input_info(class_inputs, name)
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                if not self._link(unique_id, name, value, input_type, extra, errors):
                    valid = False
                continue
            try:
                value = inputs[name] = _convert(input_type, value)
            except Exception as exc:
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{name}, {value}, {exc}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": [input_type, extra],
                            "received_value": value,
                            "exception_message": str(exc),
                        },
                    }
                )
                continue
            if name not in checks:
                problem = _check_value(name, value, input_type, extra)
                if problem is not None:
                    errors.append(problem)
        for name, check in checks.items():
            if name in inputs and not isinstance(inputs[name], list):
                verdict = check(inputs[name])
                if verdict is not True:
                    details = name if verdict is False else f"{name} - {verdict}"
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": details,
                            "extra_info": {"input_name": name},
                        }
                    )
        result = (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        self.validated[unique_id] = result
        return result

    def _link(
        self,
        unique_id: str,
        name: str,
        value: list[Any],
        input_type: Any,
        extra: Any,
        errors: list[dict[str, Any]],
    ) -> bool:
        """Check one linked input; False when the linked node is invalid (errors live there)."""
        config = [input_type, extra]
        if len(value) != 2:
            errors.append(
                {
                    "type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    "details": name,
                    "extra_info": {
                        "input_name": name,
                        "input_config": config,
                        "received_value": value,
                    },
                }
            )
            return True
        source = value[0]
        source_class = self.prompt[source]["class_type"]
        received_type = tuple(self._info(source_class)["output"])[value[1]]
        if not validate_node_input(received_type, input_type):
            errors.append(
                {
                    "type": "return_type_mismatch",
                    "message": "Return type mismatch between linked nodes",
                    "details": (
                        f"{name}, received_type({received_type}) mismatch input_type({input_type})"
                    ),
                    "extra_info": {
                        "input_name": name,
                        "input_config": config,
                        "received_type": received_type,
                        "linked_node": value,
                    },
                }
            )
            return True
        try:
            return self.inputs(source)[0] is not False
        except Exception as exc:
            self.validated[source] = (
                False,
                [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(exc),
                        "extra_info": {
                            "input_name": name,
                            "input_config": config,
                            "exception_message": str(exc),
                            "exception_type": full_type_name(type(exc)),
                            "traceback": _traceback(),
                            "linked_node": value,
                        },
                    }
                ],
                source,
            )
            return False


def validate_prompt(
    prompt: Graph,
    lookup: Lookup,
    *,
    checks: Checks | None = None,
    partial_targets: Sequence[str] | None = None,
) -> Validation:
    """Validate ``prompt`` (converting input values in place) against ``lookup``'s classes."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if "class_type" not in node:
            message = "Cannot execute because a node is missing the class_type property."
            return Validation(False, error("invalid_prompt", message, f"Node ID '#{node_id}'"))
        class_type = node["class_type"]
        info = lookup(class_type)
        if info is None:
            message = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, error("invalid_prompt", message, f"Node ID '#{node_id}'"))
        if info.get("output_node") is True and (
            partial_targets is None or node_id in partial_targets
        ):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, error("prompt_no_outputs", "Prompt has no outputs"))

    validator = _Validator(prompt, lookup, checks or {})
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            valid, reasons, _ = validator.inputs(output)
        except Exception as exc:
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(exc),
                    "extra_info": {
                        "exception_type": full_type_name(type(exc)),
                        "traceback": _traceback(),
                    },
                }
            ]
            validator.validated[output] = (False, reasons, output)
        if valid is True:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (ok, node_reasons, _) in validator.validated.items():
            if ok is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, es in failed for e in es)
        failure = error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        return Validation(False, {**failure, "details": details}, [], node_errors)
    return Validation(True, None, good, node_errors)


__all__ = [
    "Checks",
    "Graph",
    "Validation",
    "error",
    "full_type_name",
    "validate_node_input",
    "validate_prompt",
]
