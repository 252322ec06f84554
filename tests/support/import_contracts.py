"""Contract types of our own for ``lint-imports``: what import-linter's built-in types cannot say.

Registered in pyproject.toml (``[tool.importlinter] contract_types``); lint-imports puts the working
directory on ``sys.path``, so it finds this module when run from the repository root.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any, cast

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class PackageDocstringsContract(Contract):
    """Each root package's ``__init__`` docstring says what it owns and what it may import.

    The import contracts check the arrows; the docstring is where a reader learns them, next to the
    package's purpose.  Options: ``markers``, the phrases every such docstring must contain
    (default ``Owns:`` and ``May import:``).  The packages are the session's root packages.
    """

    type_name = "package_docstrings"

    markers = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        # The field is parsed into a list on the instance; the class attribute is its declaration.
        markers = cast("list[str] | None", self.markers) or ["Owns:", "May import:"]
        packages: list[str] = sorted(self.session_options.get("root_packages") or [])
        problems: list[str] = []
        for package in packages:
            spec = importlib.util.find_spec(package)  # locates the package without importing it
            if spec is None or spec.origin is None:
                problems.append(f"{package}: no __init__.py found")
                continue
            init = Path(spec.origin)
            doc = ast.get_docstring(ast.parse(init.read_text(), filename=str(init))) or ""
            missing = [marker for marker in markers if marker not in doc]
            if not doc:
                problems.append(f"{init}: no docstring; it should say {' and '.join(markers)}")
            elif missing:
                problems.append(f"{init}: the docstring does not say {', '.join(missing)}")
        return ContractCheck(kept=not problems, metadata={"problems": problems})

    def render_broken_contract(self, check: ContractCheck) -> None:
        problems: list[Any] = check.metadata["problems"]
        for problem in problems:
            output.print_error(str(problem), bold=False)
            output.new_line()
