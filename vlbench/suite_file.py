"""Reading a suite file as the untrusted input it is: bounded before anything walks it.

YAML can make a small file large: aliases nested nine deep turn 370 bytes into 9^9 items, which
``str()`` of a suite value then walks (gigabytes, minutes). So the bytes are capped before they
are decoded, the nesting is measured on the parser's event stream (no recursion, however deep the
file), and the node graph the composer builds, where an alias is one shared node rather than a
copy, is measured as it would expand before a single Python object is made from it. Every
refusal is a ``ValueError`` whose message says which bound and where; ``vlbench.suites`` names
the file. Pure: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: a suite is a few kilobytes; a megabyte is thousands of models
MAX_BYTES = 1 << 20
#: a suite nests four levels (models, an entry, its sweep, the values); aliases may add a few
MAX_DEPTH = 16
#: values after alias expansion (a thousand-model sweep is ~10,000)
MAX_NODES = 100_000


def read_bounded(path: Path, limit: int = MAX_BYTES) -> str:
    """The file's text: at most ``limit`` bytes read (a device or a huge file is refused, not
    slurped), decoded as UTF-8. Raises OSError as opening does, ValueError for the rest."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB; a suite is a short YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not a text file (byte {exc.start} is not UTF-8)") from None


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` within ``MAX_DEPTH`` and ``MAX_NODES``; raises ``yaml.YAMLError`` for
    malformed YAML and ValueError for a bound."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES // 1024} KiB; a suite is a short YAML file")
    _check_nesting(text)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nesting(text: str) -> None:
    """Nesting depth as written, from the event stream (the composer recurses per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ValueError(f"nested more than {MAX_DEPTH} levels deep at line {line}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Size and depth of the document with every alias expanded, from the composed graph (each
    node measured once: linear in the file, whatever it would expand to); a node that contains
    itself (a recursive alias) is refused."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_NODES:
                raise ValueError(f"expands to more than {MAX_NODES:,} values (YAML aliases "
                                 f"repeat what they name)")
            if depth[key] > MAX_DEPTH + 1:
                raise ValueError(f"nested more than {MAX_DEPTH} levels deep once its aliases "
                                 "are expanded")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise ValueError("an alias refers to a value that contains it (recursive YAML)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
