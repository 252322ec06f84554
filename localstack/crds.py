"""Write ``deploy/crds/*.yaml`` from the shared model: ``python -m localstack.crds``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from policies.crd import all_crds

CRD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "crds"
HEADER = "# Generated from policies/models.py by `python -m localstack.crds`; do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def crd_files() -> dict[Path, str]:
    return {CRD_DIR / f"{c['spec']['names']['plural']}.yaml": render(c) for c in all_crds()}


def main() -> None:
    CRD_DIR.mkdir(exist_ok=True)
    for path, text in crd_files().items():
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
