"""The container images' recipes (images/): both Dockerfiles lint clean with hadolint, and they agree
with what Kubernetes runs: the numeric non-root user the pods require, every command the manifests
start, and packages pinned by constraints.txt. Building the images takes minutes, so the test suite
does not (images/build.sh does, images/README.md reports it)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = {"lomas-mesh": IMAGES / "Dockerfile", "lomas-mesh-heavy": IMAGES / "Dockerfile.heavy"}
HADOLINT = Path(sys.executable).parent / "hadolint"
# Each Lomas distribution and the folder of its source.
PACKAGES = {
    "lomas-client": "clients/python",
    "lomas-common": "services/common",
    "lomas-admin-store": "services/admin",
    "lomas-budget": "services/budget",
    "lomas-executor": "services/executor",
    "lomas-gateway": "services/gateway",
}


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        raise RuntimeError(f"{HADOLINT} is missing: pip install -r requirements-dev.txt")
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_dockerfile_lints_clean(image: str) -> None:
    result = hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_the_linter_refuses_an_unpinned_root_image(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text(
        "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nCMD curl example.org\n"
    )
    result = hadolint(sloppy)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3009", "DL3025"):
        assert rule in result.stdout, rule


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """Each stage's instructions, as (INSTRUCTION, arguments), line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, rest = line.split(maxsplit=1)
        if word.upper() == "FROM":
            found.append([])
        if found:  # ARG before the first FROM belongs to no stage
            found[-1].append((word.upper(), rest))
    return found


@functools.cache
def rendered_workloads() -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render k8s/: run scripts/setup-k8s-tools.sh")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s" / "base")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return tuple(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))


def installed_distributions(dockerfile: Path) -> set[str]:
    """The Lomas distributions the builder stage installs."""
    (install,) = [rest for word, rest in stages(dockerfile)[0] if word == "RUN"]
    return {word for word in install.split() if word in PACKAGES}


def console_scripts(distributions: set[str]) -> set[str]:
    """The commands the distributions (and the Lomas ones they depend on) install."""
    scripts: set[str] = set()
    pending, seen = list(distributions), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        project = tomllib.loads((ROOT / PACKAGES[name] / "pyproject.toml").read_text())["project"]
        scripts |= set(project.get("scripts", {}))
        pending += [d for d in project["dependencies"] if d in PACKAGES]
    return scripts


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_runs_as_the_numeric_user_the_pods_require(image: str) -> None:
    builder, final = stages(DOCKERFILES[image])
    assert [rest for word, rest in builder if word == "USER"] == []
    (user,) = [rest for word, rest in final if word == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    pods = [
        w["spec"]["template"]["spec"]
        for w in rendered_workloads()
        if any(c["image"] == image for c in w["spec"]["template"]["spec"]["containers"])
    ]
    assert pods
    for pod in pods:
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
            uid,
            gid,
        )
    # The final stage builds nothing: no compiler, no package manager run, no pip.
    runs = " ".join(rest for word, rest in final if word == "RUN")
    for tool in ("apt-get", "pip", "gcc", "make"):
        assert tool not in runs, tool


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_has_every_command_its_pods_start(image: str) -> None:
    commands = {
        c["command"][0]
        for w in rendered_workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        if c["image"] == image
    }
    assert commands
    assert commands <= console_scripts(installed_distributions(DOCKERFILES[image]))


def test_the_images_install_offline_what_constraints_pin() -> None:
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert "pip" in pinned  # the pip that build.sh puts in the context
    for dockerfile in DOCKERFILES.values():
        (install,) = [rest for word, rest in stages(dockerfile)[0] if word == "RUN"]
        assert "--no-index" in install and "--constraint=/build/constraints.txt" in install
    build = (IMAGES / "build.sh").read_text()
    assert "--constraint constraints.txt" in build
    assert "--network=none" in build
