"""Turn an upstream CustomResourceDefinition into the JSON schema the deploy tests validate with.

    python tests/unit/deploy/schemas/extract_crd_schema.py ray.io_rayservices.yaml v1
    python tests/unit/deploy/schemas/extract_crd_schema.py keda.sh_scaledobjects.yaml v1alpha1

Keeps the version's openAPIV3Schema exactly, minus the prose `description` fields (most of the
bytes), and writes it beside this script as <kind>-<group>-<version>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def _strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        # "description" is also a legitimate property *name* inside "properties": keep those.
        return {
            key: (_strip_properties(value) if key == "properties" else _strip_descriptions(value))
            for key, value in node.items()
            if key != "description"
        }
    if isinstance(node, list):
        return [_strip_descriptions(item) for item in node]
    return node


def _strip_properties(properties: dict[str, Any]) -> dict[str, Any]:
    return {name: _strip_descriptions(schema) for name, schema in properties.items()}


def main(crd_path: str, version: str) -> Path:
    crd = yaml.safe_load(Path(crd_path).read_text())
    spec = crd["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version]
    schema = _strip_descriptions(served["schema"]["openAPIV3Schema"])
    out = Path(__file__).with_name(f"{spec['names']['kind'].lower()}-{spec['group']}-{version}.json")
    out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
