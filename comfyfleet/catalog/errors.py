"""The catalog's errors: a bad catalog (load time) and a bad request (render time)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class CatalogError(Exception):
    """A workflow graph or contract is invalid, or an unknown workflow was asked for.

    `problems` holds one line per problem (a load reports all of them at once); each line names
    the file, and where it applies the parameter and the graph node.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UnknownWorkflowError(CatalogError, LookupError):
    """`Catalog.get` was given an id the catalog does not hold."""

    def __init__(self, workflow_id: str, known: Sequence[str]) -> None:
        self.workflow_id = workflow_id
        self.known = list(known)
        listed = ", ".join(self.known) or "none"
        super().__init__(f"unknown workflow {workflow_id!r} (known workflows: {listed})")


class ParamError(ValueError):
    """A request's parameters do not fit the workflow's contract (a client error, HTTP 422).

    Raised before any node is touched. `param` is the parameter's name (None when the whole
    parameter object is wrong); `message` says what was wrong and what is allowed.
    """

    def __init__(self, *, param: str | None, message: str, workflow: str | None = None) -> None:
        self.param = param
        self.message = message
        self.workflow = workflow
        where = f"{param}: " if param else ""
        super().__init__(f"{where}{message}")


def problem(
    file: Path | str, message: str, *, param: str | None = None, node: str | None = None
) -> str:
    """One problem line: `file: parameter 'p': node 5 (Class): message`.

    `node` is a node's description (`graph.describe`); parts are left out when not known.
    """
    parts = [str(file)]
    if param is not None:
        parts.append(f"parameter {param!r}")
    if node is not None:
        parts.append(node)
    parts.append(message)
    return ": ".join(parts)
