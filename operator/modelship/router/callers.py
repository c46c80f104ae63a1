"""Who calls: API keys with names, and what each name may call.

The keys file (a mounted Secret, `apiKeysFile`) is either a YAML mapping of names to keys
(a name may have a list of keys, for a rotation), or, as before, one key per line: such a
key's name is `key-` and the first 8 hex digits of its SHA-256, stable and safe to log. The
router's settings say what each name may call (`callers`, else `defaultCaller`): model names,
`namespace/name`s, aliases, tasks or globs of them. Keys are looked up by their SHA-256 (a
dict: the same cost for ten keys or ten thousand, and no comparison that leaks by its time).

A key that may not call the model it names gets 403, whether that model exists or not: a 404
for a model it may not call would tell it which models exist. The 403 and the 404 for a model
that does not exist list only what the key may call.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path

import yaml

from .errors import ErrorAnswer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$")


def key_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def read_keys(path: str) -> dict[str, str]:
    """key -> name, from the keys file; ValueError says what is wrong with it (a file that is
    neither a mapping of names to keys nor plain keys one per line is refused whole)."""
    text = Path(path).read_text()
    try:
        found = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not a YAML mapping of caller names to keys, nor one key per line: "
                         f"{str(e).splitlines()[0]}") from None
    if isinstance(found, dict):
        return _named(path, found)
    if found is not None and not isinstance(found, str):
        raise ValueError(f"{path} must hold a YAML mapping of caller names to keys, or one key per line")
    keys: dict[str, str] = {}
    for line in text.splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            if any(c.isspace() for c in key) or key.startswith(("-", "[", "{")):
                raise ValueError(f"{path}: a line is not a key (no spaces; a list or mapping is YAML)")
            keys[key] = key_name(key)
    if not keys:
        raise ValueError(f"{path} holds no API key")
    return keys


def _named(path: str, found: dict) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name, given in found.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{path}: {name!r} is not a caller name (letters, digits, '_', '.', ':', '@', '-')")
        for key in given if isinstance(given, list) else [given]:
            if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key.strip()):
                raise ValueError(f"{path}: the key of {name!r} must be a string without spaces")
            if key.strip() in keys:
                raise ValueError(f"{path}: one key is given to both {keys[key.strip()]!r} and {name!r}")
            keys[key.strip()] = name
    if not keys:
        raise ValueError(f"{path} holds no API key")
    return keys


class Policy:
    """What one caller may call: globs matched against every name of a target."""

    __slots__ = ("patterns", "any", "_seen")

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = tuple(patterns)
        self.any = "*" in self.patterns
        # id(target) -> (target, its names then, may call): a target's names change in place
        # when discovery reads its ModelDeployment again, and the answer with them
        self._seen: dict[int, tuple[object, tuple, bool]] = {}

    def may(self, target) -> bool:
        if self.any:
            return True
        names = target.names_key
        seen = self._seen.get(id(target))
        if seen is not None and seen[0] is target and seen[1] is names:
            return seen[2]
        ok = any(fnmatch.fnmatchcase(n, p) for n in names for p in self.patterns)
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[id(target)] = (target, names, ok)
        return ok

    def may_name(self, name: str) -> bool:
        return self.any or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


class Callers:
    """The keys (hashed) and the callers' policies; replaced whole on a reload."""

    def __init__(self, keys: dict[str, str] | None = None, policies: dict[str, list[str]] | None = None,
                 default: list[str] | None = None) -> None:
        self.keys = {hashlib.sha256(k.encode()).digest(): n for k, n in (keys or {}).items()}
        self.policies = {n: Policy(p) for n, p in (policies or {}).items()}
        self.default = Policy(default if default is not None else ["*"])

    def identify(self, headers) -> str:
        """The caller's name, from `Authorization: Bearer <key>` ("" when no key is needed);
        401 without a known key."""
        if not self.keys:
            return ""
        given = next((v for k, v in headers if k == b"authorization"), b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
        name = self.keys.get(hashlib.sha256(token).digest()) if token else None
        if name is None:
            raise ErrorAnswer(401, "a valid API key is needed: send `Authorization: Bearer <key>`",
                              "authentication_error", "invalid_api_key")
        return name

    def policy(self, caller: str) -> Policy:
        return self.policies.get(caller, self.default)

    def refuse(self, caller: str, model: str, may: list[str]) -> ErrorAnswer:
        """403 for a model this caller may not call, listing only those it may (`may`)."""
        who = f"the API key {caller!r}" if caller else "this router"
        return ErrorAnswer(403, f"{who} may not call the model {model!r}; it may call: {', '.join(may) or '(none)'}",
                           "permission_error", "model_not_allowed")
