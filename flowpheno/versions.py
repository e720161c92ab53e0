"""The package versions a run records next to its numbers (``fit.json``, benchmark results)."""

from __future__ import annotations

import platform
from importlib import metadata

from flowpheno import __version__

RECORDED_PACKAGES = ("torch", "zuko", "numpy", "scipy", "pandas", "pandas-plink", "safetensors")
"""Installed distributions whose version can change a fit's numbers."""


def package_versions() -> dict[str, str]:
    """Versions that decide the numbers: ``{"python": "3.x.y", "flowpheno": ..., name: version}``
    for each of :data:`RECORDED_PACKAGES` (``"absent"`` when not installed). Never raises."""
    versions = {"python": platform.python_version(), "flowpheno": __version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
