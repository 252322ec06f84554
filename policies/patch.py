"""The RFC 6902 JSON patch mutate answers with, built for the flat maps it changes.

Written out rather than computed with ``jsonpatch.make_patch``: both maps mutate touches
(``spec.limits`` and ``metadata.annotations``) are flat, and make_patch took ~40% of a mutation's
time (measured by benchmarks/bench_policy.py).  Tests apply these ops with jsonpatch and compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonpointer import escape

from policies.stamps import is_mapping


def subtree_patch(
    parent: Mapping[str, Any], key: str, parent_path: str, new: dict[str, Any]
) -> list[dict[str, Any]]:
    """Ops turning the flat map ``parent[key]`` into ``new``, with paths under ``parent_path``."""
    old = parent.get(key)
    path = f"{parent_path}/{key}"
    if not is_mapping(old):
        return [{"op": "replace" if key in parent else "add", "path": path, "value": new}]
    if not new:
        return [{"op": "remove", "path": path}]
    ops: list[dict[str, Any]] = [{"op": "remove", "path": f"{path}/{escape(k)}"} for k in old if k not in new]
    for k, value in new.items():
        if k not in old:
            ops.append({"op": "add", "path": f"{path}/{escape(k)}", "value": value})
        elif old[k] != value:
            ops.append({"op": "replace", "path": f"{path}/{escape(k)}", "value": value})
    return ops
