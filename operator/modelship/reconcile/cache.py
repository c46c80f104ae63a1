"""The watch cache (an informer, as controller-runtime has): the latest object of each kind
the operator watches, so that a reconcile with nothing to change asks the API server nothing.

How it stays true:
- **Watch events** (the ones Kopf already delivers to `handlers.py`) put the object in, or
  take it out on DELETED, *before* the ModelDeployment concerned is enqueued: a reconcile
  that an event starts sees that event.
- **Listings**: one list per kind (and namespace) when the operator starts and at every
  resync round replaces what the store holds for it (`replace`): objects the watch missed
  (a watch restarted after "410 Gone" lists again but tells no DELETED) go then. Until a
  kind was listed once, it is not *synced* and the reads of it go to the API server.
- **Our own writes** (read-your-writes): what the API server answers to an apply, a patch
  or a status write is put in at once; a Job the operator deleted goes at once, and its uid
  is remembered so that a late event for it never brings it back.
- **Order**: within one object (one uid), an older resourceVersion never replaces a newer
  one (etcd's versions are integers; where one is not, the newer arrival wins).

How it holds them: each object as its compact JSON (bytes, by orjson: for a 2.5 KB
ModelDeployment 2.5 times as fast to read as the standard library's and 15 times to write),
with its version, uid and labels beside it for the bookkeeping and the selectors. A reader gets
a fresh object parsed from it (they may change what they are given), which is no slower than
the deep copy it replaces, and the store is several times smaller than the same objects as
Python dicts: at 500 ModelDeployments it holds some 4,000 objects (bench/README.md §7).
`managedFields` is left out (nothing here reads it).

What it does not hold: of most kinds only objects labelled `app.kubernetes.io/managed-by=
modelship` are watched and listed, so an object *absent* by name may still exist unlabelled
(a conflict): readers by name ask the API server when the store has none. The kinds in
`whole` (the ModelDeployments, the claims, the Services: `handlers.UNFILTERED`) are watched and
listed whole.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from typing import Iterable, NamedTuple

import orjson

MD_KIND = "ModelDeployment"
Key = tuple[str, str]  # (namespace, name)


def parse_selector(selector: str) -> list[tuple[str, str, frozenset[str]]]:
    """A label selector as the API server reads it: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    `k notin (a,b)`, `k`, `!k`, comma-separated. ValueError on anything else."""
    out, rest = [], selector.strip()
    term = re.compile(r"\s*(?:(?P<set>[\w./-]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^)]*)\)"
                      r"|(?P<key>[\w./-]+)\s*(?P<eq>==|!=|=)\s*(?P<val>[\w.-]*)"
                      r"|(?P<neg>!)?\s*(?P<ex>[\w./-]+))\s*(?:,|$)")
    while rest:
        m = term.match(rest)
        if not m or not m.group(0):
            raise ValueError(f"cannot read the label selector {selector!r} at {rest!r}")
        if m.group("set"):
            vals = frozenset(v.strip() for v in m.group("vals").split(",") if v.strip())
            out.append((m.group("set"), m.group("op"), vals))
        elif m.group("key"):
            op = "!=" if m.group("eq") == "!=" else "="
            out.append((m.group("key"), op, frozenset([m.group("val")])))
        else:
            out.append((m.group("ex"), "!" if m.group("neg") else "exists", frozenset()))
        rest = rest[m.end():]
    return out


@functools.lru_cache(maxsize=4096)
def _terms(selector: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    """`parse_selector`, once per selector (a reconcile asks with the same few every time)."""
    return tuple(parse_selector(selector))


def matches(selector: str, labels: dict | None) -> bool:
    """Whether an object with these labels is one the API server lists for this selector."""
    return _match(_terms(selector), labels or {})


def _match(terms: Iterable[tuple[str, str, frozenset[str]]], labels: dict) -> bool:
    for key, op, vals in terms:
        have = labels.get(key)
        ok = {"=": have in vals, "in": have in vals,
              "!=": have not in vals, "notin": have not in vals,
              "exists": key in labels, "!": key not in labels}[op]
        if not ok:
            return False
    return True


def _version(obj: dict) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _key(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Held(NamedTuple):
    """One object in the store."""
    version: int | None
    uid: str | None
    labels: dict
    data: bytes  # the object as compact JSON, managedFields left out
    ours: bool = False  # the answer to the operator's own write (its watch event is no news)

    @classmethod
    def of(cls, obj: dict, ours: bool = False) -> Held:
        meta = obj.get("metadata") or {}
        if "managedFields" in meta:  # half of a pod's size, and nothing here reads it
            obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        # orjson writes into a larger buffer and shrinks it in place: kept as it comes, each
        # object took twice its size in the malloc heap (5,000 ModelDeployments: 54 MiB resident
        # instead of 27). A copy of the exact size is kept instead (3 us for 2.5 KB).
        return cls(_version(obj), meta.get("uid"), meta.get("labels") or {},
                   bytes(memoryview(orjson.dumps(obj))), ours)

    def load(self) -> dict:
        return orjson.loads(self.data)


class WatchCache:
    """Objects by kind, then (namespace, name). Thread-safe: the reads run in threads."""

    def __init__(self, kinds: tuple[str, ...], whole: set[str] = frozenset(), forget_after: int = 10_000):
        self.whole = set(whole)  # kinds watched and listed whoever made them: absent there is absent
        self.objects: dict[str, dict[Key, Held]] = {kind: {} for kind in kinds}
        self.listed: dict[str, set[str | None]] = {kind: set() for kind in kinds}  # namespaces (None: all)
        # uids seen deleted, the latest `forget_after`, each with the version it went at: None
        # for our own delete (never back), the DELETED event's version for a watch's (a filtered
        # watch also says DELETED when a label is taken off: the object is back, newer, when
        # the label is put back).
        self.gone: OrderedDict[str, int | None] = OrderedDict()
        self.forget_after = forget_after
        self.lock = threading.Lock()
        # The names of each kind by namespace, and by namespace and label (key, value): a listing
        # by selector looks at the objects its equality terms name, not at every object of the
        # kind (a reconcile lists its pods and Jobs; with 500 ModelDeployments a scan of some
        # 1,500 pods each time was the largest share of the operator's own CPU, bench §7).
        self.names: dict[str, dict[str, set[str]]] = {kind: {} for kind in kinds}
        self.labelled: dict[str, dict[tuple[str, str, str], set[str]]] = {kind: {} for kind in kinds}

    def _store(self, kind: str, key: Key, held: Held) -> None:
        have = self.objects[kind].get(key)
        if have is not None:
            self._unindex(kind, key, have)
        self.objects[kind][key] = held
        ns, name = key
        self.names[kind].setdefault(ns, set()).add(name)
        for label in held.labels.items():
            self.labelled[kind].setdefault((ns, *label), set()).add(name)

    def _drop(self, kind: str, key: Key) -> None:
        held = self.objects[kind].pop(key)
        self._unindex(kind, key, held)
        names = self.names[kind].get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self.names[kind][key[0]]

    def _unindex(self, kind: str, key: Key, held: Held) -> None:
        ns, name = key
        for label in held.labels.items():
            names = self.labelled[kind].get((ns, *label))
            if names is not None:
                names.discard(name)
                if not names:
                    del self.labelled[kind][(ns, *label)]

    # --- what comes in --------------------------------------------------------------------

    def put(self, kind: str, obj: dict, ours: bool = False) -> bool:
        """An object as the API server showed it (a watch event, a listing, `ours`: the answer
        to the operator's own write); whether the store's copy changed (not when it held that
        version, or a newer one)."""
        with self.lock:
            return self._put(kind, obj, ours)

    def _put(self, kind: str, obj: dict, ours: bool = False) -> bool:
        key, held = _key(obj), Held.of(obj, ours)
        uid, new = held.uid, held.version
        if uid in self.gone:
            went = self.gone[uid]
            if went is None or new is None or new <= went:
                return False  # a late event of an object already deleted
            del self.gone[uid]  # out of a filtered watch and back in (its label put back)
        have = self.objects[kind].get(key)
        old = have.version if have is not None else None
        # Older than what we hold (a late event after our own write's answer; or, of another
        # object of that name, the one deleted before this one was made: etcd's revisions only
        # grow): kept out.
        if old is not None and new is not None and new < old:
            return False
        self._store(kind, key, held)
        return have is None or have.uid != uid or new is None or new != old

    def remove(self, kind: str, namespace: str, name: str, uid: str | None = None,
               version: int | None = None) -> None:
        """Deleted: by our own delete (no `version`: never back under this uid), or as a DELETED
        event at `version` (back only newer than that: a filtered watch's object relabelled)."""
        with self.lock:
            have = self.objects[kind].get((namespace, name))
            held = have.uid if have is not None else None
            if have is not None and (uid is None or held in (uid, None)):
                self._drop(kind, (namespace, name))  # (else a newer object of that name: kept)
            uid = uid or held
            if uid:
                self.gone[uid] = None if version is None or self.gone.get(uid, 0) is None else version
                while len(self.gone) > self.forget_after:
                    self.gone.popitem(last=False)

    def event(self, kind: str, raw: dict) -> bool:
        """A watch event as Kopf hands it over (`type` None: the initial listing); whether it
        is news: not when the store holds the answer to the operator's own write of that object
        at that version or a newer one (its echo: the reconcile that wrote it runs again by
        itself). A version a listing put in first is news all the same: nothing else may have
        enqueued anyone for it (a resync round that failed half-way enqueues nobody)."""
        obj = raw.get("object") or {}
        if raw.get("type") == "DELETED":
            ns, name = _key(obj)
            self.remove(kind, ns, name, (obj.get("metadata") or {}).get("uid"), _version(obj))
            return True
        meta = obj.get("metadata")
        if not meta:
            return True
        new = _version(obj)
        with self.lock:
            held = self.objects[kind].get(_key(obj))
            echo = held is not None and held.ours and held.uid == meta.get("uid") \
                and None not in (new, held.version) and new <= held.version
            if not echo:
                self._put(kind, obj)
        return not echo

    def replace(self, kind: str, namespace: str | None, items: list[dict], version: str | None) -> None:
        """A full listing of the kind (in a namespace; None: the cluster) at `version`: what it
        has goes in, what the store holds beyond it and is no newer than the listing goes."""
        with self.lock:
            for obj in items:
                self._put(kind, obj)
        self.prune(kind, namespace, {_key(o) for o in items}, version)

    def prune(self, kind: str, namespace: str | None, present: set[Key], version: str | None) -> None:
        """The end of a listing put in page by page: what the store holds beyond the `present`
        keys and is no newer than the listing's `version` goes; the kind is listed there."""
        try:
            listed_at = int(version) if version else None
        except ValueError:
            listed_at = None
        with self.lock:
            for key, held in list(self.objects[kind].items()):
                if namespace is not None and key[0] != namespace or key in present:
                    continue
                v = held.version
                if listed_at is None or v is None or v <= listed_at:
                    self._drop(kind, key)
            self.listed[kind].add(namespace)

    # --- what goes out --------------------------------------------------------------------

    def synced(self, kind: str, namespace: str) -> bool:
        """Whether the kind was listed once in this namespace (or cluster-wide)."""
        listed = self.listed[kind]
        return None in listed or namespace in listed

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        """A fresh object of its own (the readers may change what they are given)."""
        held = self.objects[kind].get((namespace, name))
        return held.load() if held is not None else None

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        """Fresh objects, by name."""
        terms = _terms(selector) if selector else ()
        with self.lock:
            names = self.names[kind].get(namespace, set())
            for key, op, vals in terms:  # the fewest names an equality term allows
                if op in ("=", "in") and len(vals) == 1:
                    names = min(names, self.labelled[kind].get((namespace, key, next(iter(vals))), set()), key=len)
            objects = self.objects[kind]
            found = [(name, objects[(namespace, name)]) for name in names]
        found = sorted((name, h) for name, h in found if _match(terms, h.labels))
        return [h.load() for _, h in found]
