"""The YAML document with its places: the data for the parser, and where each path of
it starts in the file, so an error reads `line 12, column 9: tiers.demo.models[1]: ...`.

PyYAML's `safe_load` keeps the last of two equal keys without a word (`host` given
twice binds the second); here every repeated key is reported with its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE: Final = "tag:yaml.org,2002:merge"  # `<<: *base` overrides on purpose: not a duplicate

Place = tuple[int, int]  # (line, column), 1-based as editors count


@dataclass(slots=True)
class Marks:
    """Path, spelled as the parser spells it (`providers.openai.kind`, `models[2]`) ->
    the place of its key and of its value.  Empty for a document built in code."""

    keys: dict[str, Place] = field(default_factory=dict)
    values: dict[str, Place] = field(default_factory=dict)

    def place(self, where: str, *, key: bool = False) -> Place | None:
        """Where `where` is in the file: its key's place with `key` (an unknown field),
        else its value's (a bad value).  A path absent from the file (a required field)
        gets the place of its nearest parent's key, the line naming the mapping."""
        exact = (self.keys.get(where) if key else None) or self.values.get(where)
        if exact is not None:
            return exact
        cut = len(where)
        while (cut := max(where.rfind(".", 0, cut), where.rfind("[", 0, cut))) > 0:
            parent = where[:cut]
            found = self.keys.get(parent) or self.values.get(parent)
            if found is not None:
                return found
        return None


class DocumentError(Exception):
    """The text is not YAML: one line, with the place the YAML parser stopped."""


@dataclass(frozen=True, slots=True)
class Document:
    data: Any
    marks: Marks
    duplicates: tuple[tuple[Place, str, str], ...]  # (place, path, message) of each repeated key


class MarkedLoader(yaml.SafeLoader):
    """A SafeLoader that walks the composed nodes before building the data: it checks
    every mapping's keys (a repeated one is recorded with its place, where `safe_load`
    would drop the first silently) and keeps the place of every path in `places`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.places = Marks()  # not `marks`: PyYAML's parser uses that name
        self.duplicates: list[tuple[Place, str, str]] = []
        self._seen: set[int] = set()

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._walk(node, "")
        return self.construct_document(node)

    def _walk(self, node: Node, path: str) -> None:
        # Each node once: an alias repeats a node, a recursive one would never end and
        # nested ones multiply; an alias's paths fall back to its parent's place.
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, Place] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    self._walk(value_node, path)
                    continue
                if not isinstance(key_node, ScalarNode):
                    continue  # a list or mapping as a key: the parser names it unknown
                name = key_node.value
                child = f"{path}.{name}" if path else name
                here = _place(key_node.start_mark)
                if name in first:
                    line, column = first[name]
                    self.duplicates.append((here, child, f"duplicate key (first at line {line}, column {column})"))
                    continue
                first[name] = here
                self.places.keys[child] = here
                self.places.values[child] = _place(value_node.start_mark)
                self._walk(value_node, child)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                self.places.values[child] = _place(item.start_mark)
                self._walk(item, child)


def read_document(text: str) -> Document:
    """The data of `text`, the place of each of its paths and its repeated keys;
    `DocumentError` when `text` is not YAML."""
    loader = MarkedLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = "line {}, column {}: ".format(*_place(mark)) if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"{where}invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return Document(data, loader.places, tuple(loader.duplicates))


def _place(mark: Mark) -> Place:
    return mark.line + 1, mark.column + 1
