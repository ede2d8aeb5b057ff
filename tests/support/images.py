"""The project's container images, built by hack/images.sh (cached by input hash) and run with its podman.

`built_images` builds once per session and returns the references by short name (runtime, export, operator);
`podman(...)` runs podman against the same private image store. The node tier imports the same references into
containerd (`hack/images.sh save DIR` writes docker archives for `ctr images import`).
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES_SH = ROOT / "hack" / "images.sh"
NAMES = ("runtime", "export", "operator")
BUILD_TIMEOUT = 3600.0


@functools.cache
def build_images() -> dict[str, str]:
    """Build (or reuse) every image; {short name: reference}. Fails with the script's own one-line error."""
    result = subprocess.run(
        ["bash", str(IMAGES_SH), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/images.sh build failed:\n{result.stderr[-3000:]}")
    refs = result.stdout.split()
    assert len(refs) == len(NAMES), result.stdout
    return dict(zip(NAMES, refs, strict=True))


def podman(*args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman with the project's image store and settings (runc, ulimits)."""
    result = subprocess.run(
        ["bash", str(IMAGES_SH), "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def inspect(ref: str) -> dict[str, Any]:
    """`podman image inspect` of one image."""
    data: list[dict[str, Any]] = json.loads(podman("image", "inspect", ref).stdout)
    return data[0]


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """References of the runtime, export and operator images built from this checkout."""
    return build_images()
