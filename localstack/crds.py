"""Write ``deploy/crds/*.yaml`` and the Helm chart's copy in ``deploy/chart/crds/`` from the shared
model: ``python -m localstack.crds`` (``make crds``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts.crd import all_crds

CRD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "crds"
#: Helm installs what is in a chart's crds/ before its templates; kept identical to CRD_DIR.
CHART_CRD_DIR = CRD_DIR.parent / "chart" / "crds"
HEADER = "# Generated from contracts/resources.py by `python -m localstack.crds`; do not edit by hand.\n"
#: CRDs of other projects' APIs we ship as written (a structural copy of upstream's schema), not
#: generated: OpenReports' Report, which the controller writes its policy reports into.
HAND_WRITTEN: tuple[str, ...] = ("openreports.yaml",)


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def crd_files() -> dict[Path, str]:
    return {CRD_DIR / f"{c['spec']['names']['plural']}.yaml": render(c) for c in all_crds()}


def main() -> None:
    for directory in (CRD_DIR, CHART_CRD_DIR):
        directory.mkdir(exist_ok=True)
        for path, text in crd_files().items():
            target = directory / path.name
            target.write_text(text)
            print(f"wrote {target}")
    for name in HAND_WRITTEN:
        (CHART_CRD_DIR / name).write_bytes((CRD_DIR / name).read_bytes())
        print(f"copied {CRD_DIR / name} to {CHART_CRD_DIR}")


if __name__ == "__main__":
    main()
