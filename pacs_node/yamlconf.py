"""Load the node's YAML config and validate it; every error names the file, line and field.

The text is parsed once into YAML nodes with PyYAML's SafeLoader (plain data only, never
Python objects) and the data is built from those nodes, so that each pydantic error's location
(`routing.rules.1.process.pipeline`) can be walked back to the line it came from. Errors name
a rule as well as count it (`routing.rules.1[doppler].process`), and a misspelt key gets the
known key closest to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pacs_node.config import DEFAULTS_FILE, Config
from umsrep_core.errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"


def load_config(path: Path | None) -> Config:
    """The validated config in `path`; None: the packaged defaults (`defaults.yaml`).

    An empty file means the models' defaults, which route nothing (no rules). Relative paths
    (node.data_dir, TLS files) are relative to the working directory; folder destinations are
    relative to node.data_dir (`Config.folder`).
    """
    path = DEFAULTS_FILE if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    root, data = _parse(path, text)
    try:
        return Config.model_validate({} if data is None else data)
    except ValidationError as exc:
        lines = sorted(((_line(root, _loc(e)), e) for e in exc.errors()), key=lambda le: le[0])
        raise ConfigError("\n".join(f"{path}:{n}: {_describe(e, data)}"
                                     for n, e in lines)) from None


def _parse(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _reject_duplicate_keys(path, root, set())
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ConfigError(f"{path}:{line}: YAML: {exc.problem or exc.context}{context}") from None
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError: no line, a position)
        raise ConfigError(f"{path}: YAML: {exc}") from None
    finally:
        loader.dispose()


def _reject_duplicate_keys(path: Path, node: yaml.Node, seen: set[int]) -> None:
    """PyYAML keeps the last of two equal keys silently; in a config that loses settings."""
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != MERGE_TAG:
                if key.value in keys:
                    raise ConfigError(f"{path}:{key.start_mark.line + 1}: duplicate key "
                                      f"{key.value!r}")
                keys.add(key.value)
            _reject_duplicate_keys(path, value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(path, item, seen)


def _loc(error: ErrorDetails) -> tuple[Any, ...]:
    # Model validators put the rest of the path in ctx["loc"] (config._error_at).
    return (*error["loc"], *error.get("ctx", {}).get("loc", ()))


def _describe(error: ErrorDetails, data: Any) -> str:
    """`routing.rules.1[doppler].process.pipeline: <message>`: a rule is named as well as
    counted, and a misspelt key gets the known key it is closest to."""
    parts, node = [], data
    for part in _loc(error):
        node = node[part] if _has(node, part) else None
        name = node.get("name") if isinstance(part, int) and isinstance(node, dict) else None
        parts.append(f"{part}[{name}]" if isinstance(name, str) else str(part))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and parts:
        close = difflib.get_close_matches(parts[-1], KNOWN_KEYS, n=1)
        message += f" (did you mean {close[0]!r}?)" if close else ""
    return f"{'.'.join(parts) or '(top level)'}: {message}"


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[str]:
    """Every key of `model` and of the models inside it."""
    seen.add(model)
    for name, info in model.model_fields.items():
        yield name
        for inner in _models_in(info.annotation):
            if inner not in seen:
                yield from _field_names(inner, seen)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


KNOWN_KEYS = sorted(set(_field_names(Config, set())))


def _line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The line of the deepest node on `loc` that exists: for a mapping entry its key's line.

    A missing key thus points at its parent mapping, and parts of pydantic's location that
    are no YAML keys (union members...) stop the walk where it is.
    """
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
