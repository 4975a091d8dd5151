"""A loaded workflow: graph + contract, with fleet defaults and model names applied."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from comfyfleet.catalog.errors import ParamError, problem
from comfyfleet.catalog.graph import Graph
from comfyfleet.catalog.params import ParamSpec, ceiling_kind


class RenderedPrompt(BaseModel):
    """A graph ready for POST /prompt, and the facts a job records about it."""

    model_config = ConfigDict(frozen=True)

    workflow: str
    graph: dict[str, Any]
    """API-format graph (a deep copy; the caller may change it)."""
    params: dict[str, Any]
    """Every parameter's resolved value, including the seed actually used."""
    output_nodes: list[str]
    images: dict[str, str]
    """Image-type parameters -> the input-folder file name the graph loads."""
    models: dict[str, list[str]]
    """Model folder -> file names this render needs on the node."""


class Workflow:
    """One catalog workflow. Built by `Catalog.load`; read-only afterwards."""

    def __init__(
        self,
        *,
        id: str,
        capability: str,
        title: str,
        description: str,
        graph: Graph,
        parameters: dict[str, ParamSpec],
        output_nodes: list[str],
        static_models: dict[str, list[str]],
        source: Path,
        graph_path: Path,
        fleet_defaults: Mapping[str, Any] | None = None,
        model_map: Mapping[str, str] | None = None,
    ) -> None:
        self.id = id
        self.capability = capability
        self.title = title
        self.description = description
        self.parameters = parameters
        self.output_nodes = output_nodes
        self.source = source
        self.graph_path = graph_path
        self._graph = graph
        self._static_models = static_models
        self._model_map = dict(model_map or {})
        self._fleet_defaults: dict[str, Any] = {}
        self._problems: list[str] = []
        self.ceilings: dict[str, int] = {}
        """The fleet's ceilings (`apply_ceilings`): per kind, and `output_pixels`."""
        for name, value in (fleet_defaults or {}).items():
            spec = parameters.get(name)
            where = f"defaults.{id}.{name}"
            if spec is None:
                self._problems.append(
                    problem(where, f"unknown parameter (known: {', '.join(parameters)})")
                )
                continue
            try:
                self._fleet_defaults[name] = spec.check(value)
            except ValueError as exc:
                self._problems.append(problem(where, f"fleet default: {exc}"))

    def apply_ceilings(self, ceilings: Mapping[str, int]) -> None:
        """Lower each parameter's maximum to the fleet's ceiling for its kind (`width`,
        `steps`, … : `comfyfleet.catalog.params.CEILING_INPUTS`); `output_pixels` bounds an
        upscale's result (`comfyfleet.jobs.service`). Called once, when loaded."""
        self.ceilings = dict(ceilings)
        for name, spec in self.parameters.items():
            kind = ceiling_kind(spec)
            ceiling = ceilings.get(kind) if kind else None
            if ceiling is not None and (spec.maximum is None or spec.maximum > ceiling):
                self.parameters[name] = spec.model_copy(update={"maximum": ceiling})

    def __repr__(self) -> str:
        return (
            f"Workflow(id={self.id!r}, capability={self.capability!r}, source={str(self.source)!r})"
        )

    # -- facts -----------------------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """A deep copy of the graph as loaded (before any parameter is applied)."""
        return copy.deepcopy(self._graph)

    @property
    def problems(self) -> list[str]:
        """Problems with the fleet defaults given for this workflow (empty when fine)."""
        return list(self._problems)

    def loads_single_image(self, name: str) -> bool:
        """Whether image parameter `name` feeds a node that loads one frame (`LoadImage`)."""
        spec = self.parameters[name]
        return any(self._graph[t.node]["class_type"] == "LoadImage" for t in spec.targets)

    def default(self, name: str) -> Any:
        """The value a parameter takes when the request leaves it out (None: required).

        Order: fleet-wide default > contract default > the graph's own value; a seed falls
        back to -1 (random), never to the graph's seed, since an absent seed means random.
        An image never defaults to the graph's file name either: that file is the exporter's
        example, not something the node is known to hold.
        """
        spec = self.parameters[name]
        if name in self._fleet_defaults:
            return self._fleet_defaults[name]
        if spec.default is not None:
            return spec.default
        if spec.graph_value is not None and spec.type not in ("image", "seed"):
            return spec.graph_value
        return -1 if spec.type == "seed" else None

    @property
    def defaults(self) -> dict[str, Any]:
        return {name: self.default(name) for name in self.parameters}

    def map_model(self, name: str) -> str:
        """A logical model name (`sd15`) -> this fleet's file name (unchanged if unmapped)."""
        return self._model_map.get(name, name)

    @property
    def required_models(self) -> dict[str, list[str]]:
        """Model folder -> file names a run with the default parameters needs."""
        values = {
            name: self.map_model(value) if self.parameters[name].type == "model" else value
            for name, value in self.defaults.items()
        }
        return self.models_for(values)

    def models_for(self, params: Mapping[str, Any]) -> dict[str, list[str]]:
        """Model folder -> file names needed for these resolved parameters."""
        needed: dict[str, list[str]] = {}
        for folder, names in self._static_models.items():
            for name in names:
                _add(needed, folder, self.map_model(name))
        for name, spec in self.parameters.items():
            value = params.get(name)
            if spec.type == "model" and spec.folder and isinstance(value, str):
                _add(needed, spec.folder, value)
        return needed

    # -- requests --------------------------------------------------------------------------

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Resolve a request's parameters: every parameter's value, checked and complete.

        Raises ParamError naming the parameter, the value and what is allowed. A seed of -1
        (or absent) becomes a random seed here; model names go through the fleet's model map.
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ParamError(
                param=None,
                message=f"parameters must be an object, got {type(params).__name__}",
                workflow=self.id,
            )
        for name in params:
            if name not in self.parameters:
                known = ", ".join(self.parameters) or "none"
                raise ParamError(
                    param=str(name),
                    message=f"unknown parameter for workflow {self.id!r} (known: {known})",
                    workflow=self.id,
                )
        resolved: dict[str, Any] = {}
        for name, spec in self.parameters.items():
            value = params.get(name)
            if value is None:
                value = self.default(name)
                if value is None:
                    raise ParamError(
                        param=name,
                        message=f"required: no value given and no default ({spec.allowed()})",
                        workflow=self.id,
                    )
                if spec.maximum is not None and spec.type in ("int", "float"):
                    try:  # a default above a fleet ceiling (limits.*) is refused too
                        spec.check(value)
                    except ValueError as exc:
                        message = f"the default {value!r} is not allowed here: {exc}"
                        raise ParamError(param=name, message=message, workflow=self.id) from None
            else:
                try:
                    value = spec.check(value)
                except ValueError as exc:
                    raise ParamError(param=name, message=str(exc), workflow=self.id) from None
            if spec.type == "seed" and value == -1:
                value = spec.random_seed()
            elif spec.type == "model":
                value = self.map_model(value)
            resolved[name] = value
        return resolved

    def parse_params(self, texts: Mapping[str, str]) -> dict[str, Any]:
        """Command-line `k=v` strings -> typed values (then pass them to validate/render)."""
        parsed: dict[str, Any] = {}
        for name, text in texts.items():
            spec = self.parameters.get(name)
            parsed[name] = spec.parse_text(text) if spec else text
        return parsed

    def render(
        self, params: Mapping[str, Any] | None = None, *, filename_prefix: str | None = None
    ) -> RenderedPrompt:
        """Validate `params` and write them into a copy of the graph.

        `filename_prefix`, when given, replaces the `filename_prefix` input of the output
        nodes that have one (e.g. `comfyfleet/<job id>`), so a job's files are easy to find.
        """
        resolved = self.validate(params)
        graph = self.graph
        for name, spec in self.parameters.items():
            for target in spec.targets:
                graph[target.node]["inputs"][target.input] = resolved[name]
        if filename_prefix is not None:
            for node_id in self.output_nodes:
                inputs = graph[node_id]["inputs"]
                if isinstance(inputs.get("filename_prefix"), str):
                    inputs["filename_prefix"] = filename_prefix
        images = {n: resolved[n] for n, s in self.parameters.items() if s.type == "image"}
        return RenderedPrompt(
            workflow=self.id,
            graph=graph,
            params=resolved,
            output_nodes=list(self.output_nodes),
            images=images,
            models=self.models_for(resolved),
        )

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of the parameters object (for the REST API and forms)."""
        properties = {}
        required = []
        for name, spec in self.parameters.items():
            default = self.default(name)
            properties[name] = spec.json_schema(default)
            if default is None:
                required.append(name)
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.title,
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if self.description:
            schema["description"] = self.description
        if required:
            schema["required"] = required
        return schema

    # -- nodes -----------------------------------------------------------------------------

    def check_against(
        self, object_info: Mapping[str, Any], models: Mapping[str, list[str]] | None = None
    ) -> list[str]:
        """Problems running this workflow on a node with these /object_info and model lists.

        Empty means it runs there. `models` maps a model folder to the node's file names
        (GET /models/<folder>); a folder left out is judged from the loader's combo choices.
        """
        from comfyfleet.catalog.live import check_workflow

        return check_workflow(self, self._graph, object_info, models or {})


def _add(needed: dict[str, list[str]], folder: str, name: str) -> None:
    names = needed.setdefault(folder, [])
    if name not in names:
        names.append(name)
