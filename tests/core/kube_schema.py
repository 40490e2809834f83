"""For the core tests: every Pod a test feeds in must pass the real Kubernetes schema (strict)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import kubernetes_validate
from kubernetes_validate.utils import all_versions


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


# The Kubernetes versions tailwatch supports that kubernetes-validate ships schemas for.
SUPPORTED_VERSIONS: tuple[str, ...] = tuple(
    sorted({v for v in all_versions() if _minor(v) >= (1, 29)}, key=_minor)
)
# Fewer for the many objects of the detector tests: the oldest and the newest.
EDGE_VERSIONS: tuple[str, ...] = (SUPPORTED_VERSIONS[0], SUPPORTED_VERSIONS[-1])


@cache
def _validate_json(body: str, version: str) -> None:
    kubernetes_validate.validate(json.loads(body), version, strict=True)


def validate_pod(pod: Mapping[str, Any], versions: tuple[str, ...] = EDGE_VERSIONS) -> None:
    """Raise kubernetes_validate.ValidationError unless `pod` is a valid Pod (strict schema)."""
    body = json.dumps(pod, sort_keys=True)
    for version in versions:
        _validate_json(body, version)
