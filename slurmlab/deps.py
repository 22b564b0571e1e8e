"""A project's Python dependencies, as the files an image build needs to install them.

The cluster's environment is one virtualenv (/opt/venv, the same interpreter on the login node
and every compute node). A project's dependencies are installed into it in an image layer of
their own (slurmlab.images), built from the project's requirements file and the files it
includes (-r/-c), or from the [project].dependencies of its pyproject.toml. Only those files go
into the build: nothing else of the project is copied, so the layer is rebuilt only when they
change. The project's own code needs no install: it is mounted at the same path on every node.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from slurmlab.errors import SlurmlabError

REQUIREMENTS_TXT = "requirements.txt"
PYPROJECT = "pyproject.toml"
PYPROJECT_REQUIREMENTS = "pyproject-dependencies.txt"  # what pyproject.toml's list becomes
INCLUDE = re.compile(r"^(?:-r|--requirement|-c|--constraint)(?:\s+|=)(\S+)$")
# Requirements that install from the project folder, which the image build does not see.
LOCAL = re.compile(r"^(?:-e|--editable)(?:\s+|=)|^(?:\.{1,2}(?:/|$)|/|file:)")


@dataclass(frozen=True)
class Requirements:
    """The files to install from: {path in the build context: content}, and the one pip reads."""

    source: Path  # the file the project names (requirements.txt or pyproject.toml)
    files: dict[str, bytes]
    main: str

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        h.update(self.main.encode())
        return h.hexdigest()


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, content) with comments stripped and backslash continuations joined."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            lines.append((start, line))
    return lines


def _gather(path: Path, project_dir: Path, files: dict[str, bytes], fix: str) -> None:
    """Add a requirements file and, recursively, the files it includes."""
    relative = path.relative_to(project_dir).as_posix()
    if relative in files:
        return
    content = path.read_bytes()
    files[relative] = content
    for number, line in logical_lines(content.decode(errors="replace")):
        where = f"{relative}, line {number}"
        if LOCAL.search(line):
            raise SlurmlabError(
                f"{where}: '{line}' installs from the project folder, which the cluster's image "
                "is built without: list the project's dependencies instead (its own code needs "
                f"no install: every node sees the project at the same path). {fix}"
            )
        include = INCLUDE.match(line)
        if include:
            target = (path.parent / include.group(1)).resolve()
            if not target.is_relative_to(project_dir) or not target.is_file():
                raise SlurmlabError(
                    f"{where}: includes {include.group(1)}, which is not a file in the project "
                    f"({project_dir}). {fix}"
                )
            _gather(target, project_dir, files, fix)


def from_pyproject(path: Path, project_dir: Path, explicit: bool, fix: str) -> Requirements | None:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SlurmlabError(f"{path} is not valid TOML: {err}. {fix}") from err
    project = data.get("project", {})
    if "dependencies" in project.get("dynamic", []):
        raise SlurmlabError(
            f"{path}: [project] dependencies are dynamic, so they are known only to the "
            f"project's build backend: name a requirements file instead. {fix}"
        )
    dependencies = project.get("dependencies", [])
    if not dependencies:
        if explicit:
            raise SlurmlabError(f"{path} lists no [project] dependencies. {fix}")
        return None
    text = "".join(f"{dep}\n" for dep in dependencies)
    return Requirements(
        source=path, files={PYPROJECT_REQUIREMENTS: text.encode()}, main=PYPROJECT_REQUIREMENTS
    )


def resolve(project_dir: Path, setting: str | bool | None, said: str) -> Requirements | None:
    """The project's dependencies: from the file `setting` names, False for none, or (None)
    requirements.txt, else pyproject.toml's [project].dependencies, when the project has one.

    said: where the setting came from, for errors (e.g. "requirements: x.txt in slurmlab.yaml").
    """
    fix = (
        "Fix the file, or point requirements: in slurmlab.yaml at the one to install "
        "(false: install nothing)."
    )
    if setting is False:
        return None
    if setting is None:
        txt, toml = project_dir / REQUIREMENTS_TXT, project_dir / PYPROJECT
        if txt.is_file():
            path = txt
        elif toml.is_file():
            return from_pyproject(toml, project_dir, explicit=False, fix=fix)
        else:
            return None
    else:
        path = (project_dir / setting).resolve()
        if not path.is_relative_to(project_dir) or not path.is_file():
            raise SlurmlabError(f"{said}: no such file in the project ({project_dir}). {fix}")
        if path.name == PYPROJECT or path.suffix == ".toml":
            return from_pyproject(path, project_dir, explicit=True, fix=fix)
    files: dict[str, bytes] = {}
    _gather(path, project_dir, files, fix)
    return Requirements(source=path, files=files, main=path.relative_to(project_dir).as_posix())
