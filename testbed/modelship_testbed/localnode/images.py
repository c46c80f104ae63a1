"""Resolve a container of a pod to the local program that stands in for its image."""

from __future__ import annotations

import fnmatch
import shlex
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .. import binaries


class ImageError(Exception):
    """The container cannot be started from this image here; `reason` is kubelet-style."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ImageEntry:
    image: str
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    programs: dict[str, str] = field(default_factory=dict)
    bind: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)  # python -m X -> python -m Y


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]


def default_mapping_path() -> Path:
    return Path(str(resources.files("modelship_testbed") / "images.yaml"))


class ImageMap:
    def __init__(self, path: Path | None = None):
        self.path = path or default_mapping_path()
        raw = yaml.safe_load(self.path.read_text()) or {}
        self.entries = [ImageEntry(**e) for e in raw.get("images", [])]

    def entry_for(self, image: str) -> ImageEntry:
        for e in self.entries:
            if fnmatch.fnmatchcase(image, e.image):
                return e
        raise ImageError("ErrImagePull", f'image "{image}" has no program on the local node: '
                                         f"add an entry to {self.path}")

    def resolve(self, image: str, command: list[str] | None, args: list[str] | None, pod_ip: str) -> Launch:
        """The argv and extra env for a container, following Docker's ENTRYPOINT/CMD rules."""
        e = self.entry_for(image)
        if command:
            head = _expand(e.programs.get(command[0], command[0]))
            argv = head + command[1:] + list(args or [])
        else:
            argv = [w for part in e.entrypoint for w in _expand(part)] + \
                   (list(args) if args else [w for part in e.cmd for w in _expand(part)])
        if not argv:
            raise ImageError("CreateContainerError", f'image "{image}": no command to run (the mapping has no '
                                                     "entrypoint and the container sets no command)")
        argv = with_module(argv, e.modules)
        env = {k: _expand_one(v) for k, v in e.env.items()}
        if "flag" in e.bind:
            argv = with_flag(argv, e.bind["flag"], pod_ip)
        for name in e.bind.get("env", "").split(","):  # one variable, or several: A,B
            if name.strip():
                env[name.strip()] = pod_ip
        return Launch(argv, env)

    def program(self, image: str, argv: list[str]) -> list[str]:
        """Map the program of an exec probe's command the same way."""
        try:
            e = self.entry_for(image)
        except ImageError:
            return argv
        return with_module(_expand(e.programs.get(argv[0], argv[0])) + argv[1:], e.modules) if argv else argv


def with_module(argv: list[str], modules: dict[str, str]) -> list[str]:
    """Replace the module of an interpreter's `-m MODULE` (its first option naming one) by
    what `modules` maps it to; any other command line is left as it is."""
    if len(argv) > 2 and argv[1] == "-m" and argv[2] in modules:
        return [argv[0], "-m", modules[argv[2]], *argv[3:]]
    return argv


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """Set `flag` to `value`: replace `--flag X` / `--flag=X`, or append it."""
    out, i, seen = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == flag and i + 1 < len(argv):
            out += [flag, value]
            i += 2
            seen = True
            continue
        if a.startswith(flag + "="):
            out.append(f"{flag}={value}")
            seen = True
        else:
            out.append(a)
        i += 1
    return out if seen else out + [flag, value]


def _expand_one(s: str) -> str:
    out = s.replace("{python}", sys.executable).replace("{venv}", sys.prefix)
    while "{bin:" in out:
        start = out.index("{bin:")
        end = out.index("}", start)
        name = out[start + 5:end]
        found = binaries.find(name)
        if found is None:
            raise ImageError("CreateContainerError",
                             f"{name} is not built on this machine: run `modelship testbed build`")
        out = out[:start] + str(found) + out[end + 1:]
    return out


def _expand(s: str) -> list[str]:
    """A mapping value may be a whole command line ("{python} -m x"): split it into words."""
    return [_expand_one(w) for w in shlex.split(s)]
