"""The catalog of pre-resolved models (`catalogFile`) is parsed once, and again whenever the
file changes: edited in place, replaced (a ConfigMap's update swaps the file's inode), or gone."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from modelship.api import ModelSource
from modelship.reconcile import resolve
from modelship.reconcile.resolve import CatalogResolver, ResolveError


def entry(sha: str, quant: str = "Q4_K_M") -> str:
    return f"""
- repo: org/cat
  revision: main
  sha: "{sha}"
  engine: llamacpp
  format: gguf
  modelFile: cat.{quant}.gguf
  quantization: {quant}
  files: [{{path: cat.{quant}.gguf, size: 10}}]
  totalBytes: 10
"""


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Counts the catalog's YAML parses."""
    count = [0]
    real = yaml.safe_load

    def counting(text):
        count[0] += 1
        return real(text)

    monkeypatch.setattr(resolve.yaml, "safe_load", counting)
    return count


def sha_of(catalog: CatalogResolver) -> str:
    return catalog.resolve(ModelSource(repo="org/cat"), "http://unused", None).sha


def write(path, text: str, age_s: float = 60.0) -> None:
    """The file, last changed `age_s` ago (older than resolve.RECENT_NS: it may be kept)."""
    path.write_text(text)
    at = time.time_ns() - int(age_s * 1e9)
    os.utime(path, ns=(at, at))


def resolved_once(tmp_path) -> tuple:
    """A catalog file (changed a minute ago) and its resolver, which has resolved it once."""
    path = tmp_path / "catalog.yaml"
    write(path, entry("1" * 40))
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    return path, catalog


def test_the_catalog_is_parsed_once_for_many_resolutions(tmp_path, parses):
    path = tmp_path / "catalog.yaml"
    write(path, entry("1" * 40))
    catalog = CatalogResolver(path)
    assert [sha_of(catalog) for _ in range(50)] == ["1" * 40] * 50
    assert parses[0] == 1


def test_a_catalog_edited_in_place_is_read_again(tmp_path, parses):
    path, catalog = resolved_once(tmp_path)
    write(path, entry("2" * 40), age_s=30)  # the same size: only the time tells
    assert sha_of(catalog) == "2" * 40
    assert parses[0] == 2


def test_a_catalog_that_only_changed_size_is_read_again(tmp_path, parses):
    path, catalog = resolved_once(tmp_path)
    st = path.stat()
    path.write_text(entry("5" * 40, quant="Q8_0") + "# longer\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same time, the same inode
    assert catalog.resolve(ModelSource(repo="org/cat", quantization="Q8_0"), "http://unused", None).sha == "5" * 40
    assert parses[0] == 2


def test_a_catalog_changed_twice_within_one_tick_of_its_clock_is_not_served_stale(tmp_path):
    """A file that changed moments ago is not kept: a second change of the same size within
    the same tick (coarse mtime clocks) would leave its stamp as it was."""
    path = tmp_path / "catalog.yaml"
    path.write_text(entry("1" * 40))
    st = path.stat()
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    path.write_text(entry("6" * 40))  # the same size, and the same time as far as the stamp can tell
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino
    assert sha_of(catalog) == "6" * 40


def test_a_catalog_replaced_by_another_file_is_read_again_even_with_the_same_time_and_size(tmp_path, parses):
    path, catalog = resolved_once(tmp_path)
    new = tmp_path / "catalog.new"
    st = path.stat()
    new.write_text(entry("3" * 40))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)  # as a ConfigMap volume's update does: a new inode under the name
    assert sha_of(catalog) == "3" * 40
    assert parses[0] == 2


def test_resolutions_at_once_parse_once_and_see_a_swap(tmp_path, parses):
    """The reconciles resolve from several threads: those that miss at once parse the file
    once; after a swap every answer is the old sha or the new, and then the new."""
    path, new = tmp_path / "catalog.yaml", tmp_path / "catalog.new"
    write(path, entry("1" * 40))
    catalog = CatalogResolver(path)
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(lambda _: sha_of(catalog), range(64))) == {"1" * 40}
        assert parses[0] == 1
        write(new, entry("7" * 40))

        def swap_midway(i: int) -> str:
            if i == 32:
                os.replace(new, path)
            return sha_of(catalog)

        assert set(pool.map(swap_midway, range(64))) <= {"1" * 40, "7" * 40}
    assert sha_of(catalog) == "7" * 40
    assert parses[0] == 2


def test_the_entries_are_the_same_objects_unchanged_by_a_resolution(tmp_path):
    path = tmp_path / "catalog.yaml"
    write(path, entry("1" * 40))
    catalog = CatalogResolver(path)
    before = [e.model_dump() for e in catalog.entries()]
    catalog.resolve(ModelSource(repo="org/cat", exclude=["*.md"]), "http://unused", None)
    assert catalog.entries() is catalog.entries()
    assert [e.model_dump() for e in catalog.entries()] == before


def test_a_catalog_that_goes_away_is_said_not_served_from_memory(tmp_path):
    path, catalog = resolved_once(tmp_path)
    path.unlink()
    with pytest.raises(ResolveError) as e:
        sha_of(catalog)
    assert e.value.reason == "CatalogUnreadable"
    assert e.value.transient


def test_a_catalog_that_turns_unparseable_is_said_and_read_again_once_fixed(tmp_path):
    path, catalog = resolved_once(tmp_path)
    write(path, "- repo: [unclosed\n", age_s=30)
    with pytest.raises(ResolveError) as e:
        sha_of(catalog)
    assert e.value.reason == "CatalogUnreadable"
    write(path, entry("4" * 40), age_s=20)
    assert sha_of(catalog) == "4" * 40
