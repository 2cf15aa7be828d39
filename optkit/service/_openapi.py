"""The OpenAPI document of the v2 REST surface both tiers serve (``GET /v2/openapi.json``).

The document is written by hand (``openapi.yaml``, shipped as package data) rather
than generated from the routes: it states what clients may rely on, and the tests
hold both tiers to it (schema-driven fuzzing with schemathesis), so a route that
drifts from it fails a test instead of silently changing the contract.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

__all__ = ["OPENAPI_PATH", "openapi_document", "openapi_json"]

#: where both tiers serve the document
OPENAPI_PATH = "/v2/openapi.json"


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document as a mapping (read once from the package)."""
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@functools.cache
def openapi_json() -> bytes:
    """The document serialized once, as served."""
    from ..v2 import json_dumps

    return json_dumps(openapi_document())
