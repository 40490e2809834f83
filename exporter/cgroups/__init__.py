"""Per-container resource usage from cgroups (v1, v2, hybrid), mapped to pods and containers.

`CgroupSampler.sample(now)` reads the cgroup files of the containers of the pods it is
given and returns a `SamplePass`; `CgroupSource` has the latest pass as the
tailwatch_container_* metric families. docs/cgroups.md describes layouts and signals.
"""

from exporter.cgroups.layout import CgroupMode, Hierarchies, detect_hierarchies
from exporter.cgroups.reader import FdBudget, raise_open_files_limit
from exporter.cgroups.sampler import (
    DROP_PARSE_ERROR,
    DROP_SAMPLER_ERROR,
    DROP_UNREADABLE,
    DROP_VANISHED,
    CgroupSample,
    CgroupSampler,
    ResourcePressure,
    SamplePass,
)
from exporter.cgroups.source import CgroupSource

__all__ = [
    "DROP_PARSE_ERROR",
    "DROP_SAMPLER_ERROR",
    "DROP_UNREADABLE",
    "DROP_VANISHED",
    "CgroupMode",
    "CgroupSample",
    "CgroupSampler",
    "CgroupSource",
    "FdBudget",
    "Hierarchies",
    "ResourcePressure",
    "SamplePass",
    "detect_hierarchies",
    "raise_open_files_limit",
]
