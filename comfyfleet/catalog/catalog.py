"""The catalog: every workflow found in the configured directories, by id and capability."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from comfyfleet.catalog.contract import load_contract, read_yaml
from comfyfleet.catalog.errors import CatalogError, UnknownWorkflowError, problem
from comfyfleet.catalog.legacy import is_legacy_config, load_legacy_config
from comfyfleet.catalog.workflow import Workflow

log = logging.getLogger(__name__)

CONTRACT_SUFFIXES = (".yaml", ".yml")


class Catalog:
    """Workflows by id. Build with `Catalog.load`; `reload()` re-reads the same sources."""

    def __init__(
        self,
        sources: Iterable[Path],
        *,
        fleet_defaults: Mapping[str, Mapping[str, Any]] | None = None,
        model_map: Mapping[str, str] | None = None,
        ceilings: Mapping[str, int] | None = None,
    ) -> None:
        self.sources = [Path(s) for s in sources]
        self.fleet_defaults = {k: dict(v) for k, v in (fleet_defaults or {}).items()}
        self.model_map = dict(model_map or {})
        self.ceilings = dict(ceilings or {})
        """Fleet-wide maxima per kind of parameter (`Workflow.apply_ceilings`)."""
        self.warnings: list[str] = []
        self._workflows: dict[str, Workflow] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        sources: Iterable[Path | str],
        *,
        fleet_defaults: Mapping[str, Mapping[str, Any]] | None = None,
        model_map: Mapping[str, str] | None = None,
        ceilings: Mapping[str, int] | None = None,
    ) -> Catalog:
        """Load every workflow under `sources` (directories, contract files, or an old-service
        config with `task_types`). Raises CatalogError listing every problem found."""
        catalog = cls(
            [Path(s) for s in sources],
            fleet_defaults=fleet_defaults,
            model_map=model_map,
            ceilings=ceilings,
        )
        catalog.reload()
        return catalog

    def reload(self) -> list[str]:
        """Re-read all sources. On error the catalog keeps its previous workflows and raises.

        Returns the ids now loaded.
        """
        workflows, warnings = self._read()
        with self._lock:
            self._workflows = workflows
            self.warnings = warnings
        for warning in warnings:
            log.warning("%s", warning)
        return list(workflows)

    def _read(self) -> tuple[dict[str, Workflow], list[str]]:
        problems: list[str] = []
        workflows: dict[str, Workflow] = {}
        for source in self.sources:
            for workflow in self._read_source(source, problems):
                other = workflows.get(workflow.id)
                if other is not None:
                    problems.append(
                        problem(
                            workflow.source,
                            f"workflow id {workflow.id!r} is already defined by {other.source}",
                        )
                    )
                    continue
                workflow.apply_ceilings(self.ceilings)
                workflows[workflow.id] = workflow
        if problems:
            raise CatalogError(problems)
        warnings = [
            problem(f"defaults.{workflow_id}", "fleet defaults for an unknown workflow")
            for workflow_id in self.fleet_defaults
            if workflow_id not in workflows
        ]
        return dict(sorted(workflows.items())), warnings

    def _read_source(self, source: Path, problems: list[str]) -> list[Workflow]:
        options = {"fleet_defaults": self.fleet_defaults, "model_map": self.model_map}
        if source.is_dir():
            paths = sorted(
                p
                for p in source.rglob("*")
                if p.suffix in CONTRACT_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(source).parts)
            )
        elif source.is_file():
            paths = [source]
        else:
            problems.append(problem(source, "workflow directory or file not found"))
            return []
        found: list[Workflow] = []
        for path in paths:
            before = len(problems)
            data = read_yaml(path, problems)
            if len(problems) > before:
                continue
            if is_legacy_config(data):
                found.extend(load_legacy_config(path, data, problems, **options))
                continue
            workflow = load_contract(path, problems, data=data, **options)
            if workflow is not None:
                found.append(workflow)
        return found

    # -- lookups -------------------------------------------------------------------------------

    def get(self, workflow_id: str) -> Workflow:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise UnknownWorkflowError(workflow_id, list(self._workflows)) from None

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self._workflows

    def __iter__(self):
        return iter(list(self._workflows.values()))

    def __len__(self) -> int:
        return len(self._workflows)

    def ids(self) -> list[str]:
        return list(self._workflows)

    def by_capability(self, capability: str) -> list[Workflow]:
        return [w for w in self._workflows.values() if w.capability == capability]

    def capabilities(self) -> list[str]:
        return sorted({w.capability for w in self._workflows.values()})
