"""The catalog of pre-resolved models (`catalogFile`) is parsed once, and again whenever the
file changes: edited in place, replaced (a ConfigMap's update swaps the file's inode), or gone."""

from __future__ import annotations

import os

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


def test_the_catalog_is_parsed_once_for_many_resolutions(tmp_path, parses):
    path = tmp_path / "catalog.yaml"
    path.write_text(entry("1" * 40))
    catalog = CatalogResolver(path)
    assert [sha_of(catalog) for _ in range(50)] == ["1" * 40] * 50
    assert parses[0] == 1


def test_a_catalog_edited_in_place_is_read_again(tmp_path, parses):
    path = tmp_path / "catalog.yaml"
    path.write_text(entry("1" * 40))
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    st = path.stat()
    path.write_text(entry("2" * 40))  # the same size: only the time tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sha_of(catalog) == "2" * 40
    assert parses[0] == 2


def test_a_catalog_replaced_by_another_file_is_read_again_even_with_the_same_time_and_size(tmp_path, parses):
    path, new = tmp_path / "catalog.yaml", tmp_path / "catalog.new"
    path.write_text(entry("1" * 40))
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    st = path.stat()
    new.write_text(entry("3" * 40))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)  # as a ConfigMap volume's update does: a new inode under the name
    assert sha_of(catalog) == "3" * 40


def test_a_catalog_that_goes_away_is_said_not_served_from_memory(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(entry("1" * 40))
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    path.unlink()
    with pytest.raises(ResolveError) as e:
        sha_of(catalog)
    assert e.value.reason == "CatalogUnreadable"
    assert e.value.transient


def test_a_catalog_that_turns_unparseable_is_said_and_read_again_once_fixed(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(entry("1" * 40))
    catalog = CatalogResolver(path)
    assert sha_of(catalog) == "1" * 40
    path.write_text("- repo: [unclosed\n")
    with pytest.raises(ResolveError) as e:
        sha_of(catalog)
    assert e.value.reason == "CatalogUnreadable"
    path.write_text(entry("4" * 40) + "\n")
    assert sha_of(catalog) == "4" * 40
