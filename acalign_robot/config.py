"""Typed, frozen configuration dataclasses and a strict YAML loader.

The dataclasses are the single source of truth; YAML is their saved form. Loading is strict:
- an unknown key is an error naming the key, the file and the line, with the closest valid key suggested;
- a wrong type or a missing required field is an error naming the field, the file and the line;
- cross-field checks live in each dataclass's `validate()`, which raises `FieldError(field, message)`; the loader
  points the error at that field's line.

`from_dict` applies the same checks to plain Python values already in memory (a checkpoint's config, a section of a
file read as data); its errors name the source and the key, without a line. `validate` runs every `validate()` of a
config object built in code, as the loader does on load, so such a config is checked before it is used.

Round trip: `load_text(cls, dump(obj)) == obj` and `from_dict(cls, to_dict(obj)) == obj`.

Supported field types: bool, int, float, str, `X | None`, `Literal[...]`, `tuple[X, ...]`, `dict[str, X]` and
nested dataclasses. Sequences load as tuples so that every config stays hashable and immutable. `Any` loads plain YAML
values as they are, for a section whose type only the code that reads it knows (a plugin driver's `args`, typed by
the driver's own config dataclass when the driver is made: drivers/plugins.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from acalign_robot.atomic import write_text_atomic
from acalign_robot.errors import InputError

__all__ = ["ConfigError", "FieldError", "dump", "from_dict", "load", "load_text", "save", "to_dict", "validate"]

T = TypeVar("T")

_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_NULL = "tag:yaml.org,2002:null"


class ConfigError(InputError):
    """A configuration problem, located at `source:line` where possible."""


class FieldError(ValueError):
    """Raised by a dataclass's `validate()`: `field` is the offending key (dotted for nested fields)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _where(node: yaml.Node | None, source: str) -> str:
    """`file:line` of a node; the node's own file wins (it may come from an included file). A node built from
    Python values (`from_dict`) has no mark: just `source`."""
    if node is None or node.start_mark is None:
        return source
    name = node.start_mark.name
    return f"{name if name and not name.startswith('<') else source}:{node.start_mark.line + 1}"


def _closest(word: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class _Builder:
    """Turns a composed YAML node tree into typed values, remembering where each value came from."""

    def __init__(self, source: str):
        self.source = source
        self._scalar_loader = yaml.SafeLoader("")

    def error(self, node: yaml.Node | None, message: str) -> ConfigError:
        return ConfigError(f"{_where(node, self.source)}: {message}")

    def build(self, tp: Any, node: yaml.Node, path: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return self._scalar_loader.construct_object(node, deep=True)
        if dataclasses.is_dataclass(tp):
            return self._build_dataclass(tp, node, path)
        if origin in (typing.Union, types.UnionType):
            options = typing.get_args(tp)
            if type(None) in options and node.tag == _TAG_NULL:
                return None
            return self.build(self._union_option(options, node), node, path)
        if origin is Literal:
            value = self._scalar(node, path)
            choices = typing.get_args(tp)
            if value not in choices:
                names = ", ".join(repr(c) for c in choices)
                raise self.error(
                    node, f"{path}: {value!r} is not one of {names}{_closest(str(value), map(str, choices))}"
                )
            return value
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, f"{path}: expected a list")
            (inner, _ellipsis) = typing.get_args(tp)
            return tuple(self.build(inner, item, f"{path}[{i}]") for i, item in enumerate(node.value))
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.error(node, f"{path}: expected a mapping")
            _key_type, value_type = typing.get_args(tp)
            result = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                result[str(key)] = self.build(value_type, value_node, f"{path}.{key}")
            return result
        if tp is bool:
            return self._typed_scalar(node, path, {_TAG_BOOL}, "a boolean (true/false)")
        if tp is int:
            return self._typed_scalar(node, path, {_TAG_INT}, "an integer")
        if tp is float:
            return float(self._typed_scalar(node, path, {_TAG_INT, _TAG_FLOAT}, "a number"))
        if tp is str:
            return self._typed_scalar(node, path, {_TAG_STR}, "a string")
        raise TypeError(f"unsupported config field type {tp!r} at {path}")

    @staticmethod
    def _union_option(options: tuple[Any, ...], node: yaml.Node) -> Any:
        """The type of a union that `node` is read as: a list for the union's tuple type (`float | tuple[float, ...]`:
        one value, or one per dimension), anything else for its other type."""
        options = tuple(option for option in options if option is not type(None))
        if len(options) == 1:
            return options[0]
        sequences = [option for option in options if typing.get_origin(option) is tuple]
        scalars = [option for option in options if typing.get_origin(option) is not tuple]
        if len(sequences) != 1 or len(scalars) != 1:
            raise TypeError(f"unsupported config union {options!r}: one tuple type and one other type")
        return sequences[0] if isinstance(node, yaml.SequenceNode) else scalars[0]

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            raise self.error(node, f"{path}: expected a single value, got a {kind}")
        return self._scalar_loader.construct_object(node)

    def _typed_scalar(self, node: yaml.Node, path: str, tags: set[str], expected: str) -> Any:
        value = self._scalar(node, path)
        if node.tag not in tags:
            raise self.error(node, f"{path}: expected {expected}, got {value!r}")
        return value

    def _build_dataclass(self, cls: type, node: yaml.Node, path: str) -> Any:
        label = path or cls.__name__
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{label}: expected a mapping of {cls.__name__} fields")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        key_nodes: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node, path)
            dotted = f"{path}.{key}" if path else str(key)
            if key not in fields:
                raise self.error(key_node, f"unknown key '{dotted}'{_closest(str(key), fields)}")
            if key in values:
                raise self.error(key_node, f"duplicate key '{dotted}'")
            values[key] = self.build(hints[key], value_node, dotted)
            key_nodes[key] = key_node
        for name, field in fields.items():
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required and name not in values:
                dotted = f"{path}.{name}" if path else name
                raise self.error(node, f"missing required key '{dotted}' in {label}")
        obj = cls(**values)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            try:
                validate()
            except FieldError as exc:
                head = exc.field.split(".")[0]
                raise self.error(key_nodes.get(head, node), _dotted_message(path, exc)) from None
        return obj


def _dotted_message(path: str, exc: FieldError) -> str:
    """The message of a `validate()` error of the config at `path`, its field dotted from the root config."""
    dotted = f"{path}.{exc.field}" if path else exc.field
    return f"{dotted}: {exc.message}"


def _configs_in(value: Any, path: str) -> typing.Iterator[tuple[str, Any]]:
    """(path, dataclass) for every dataclass in `value`, innermost first: the order the loader builds them in."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _configs_in(getattr(value, field.name), f"{path}.{field.name}" if path else field.name)
        yield path, value
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _configs_in(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _configs_in(item, f"{path}.{key}")


def validate(obj: Any, source: str = "<code>") -> None:
    """Check a config built in code as the loader checks a loaded one: every nested dataclass's `validate()`.

    Raises ConfigError `source: dotted.field: message` (the loader's message, without a line). Only the `validate()`
    checks run: field types are what the code passed.
    """
    for path, config in _configs_in(obj, ""):
        check = getattr(config, "validate", None)
        if check is None:
            continue
        try:
            check()
        except FieldError as exc:
            raise ConfigError(f"{source}: {_dotted_message(path, exc)}") from None


def _compose(text: str, source: str) -> yaml.Node:
    loader = yaml.SafeLoader(text)
    loader.name = source  # every mark (and so every error) names the file the node came from
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{line}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(f"{source}: the file is empty")
    return node


def _apply_override(root: yaml.Node, override: str) -> None:
    """Apply one `dotted.key=value` override to the node tree (the value is parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE")
    dotted, text = override.split("=", 1)
    value_node = _compose(text if text.strip() else "''", f"--set {dotted}")
    node = root
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            if depth == len(parts) - 1:
                node.value[int(part)] = value_node
                return
            node = node.value[int(part)]
            continue
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parts[:depth])}' is not a mapping")
        for key_node, child in node.value:
            if key_node.value == part:
                if depth == len(parts) - 1:
                    node.value = [(k, value_node if k is key_node else v) for k, v in node.value]
                    return
                node = child
                break
        else:
            key_node = yaml.ScalarNode(_TAG_STR, part, value_node.start_mark, value_node.end_mark)
            if depth == len(parts) - 1:
                node.value.append((key_node, value_node))
                return
            child = yaml.MappingNode("tag:yaml.org,2002:map", [], value_node.start_mark, value_node.end_mark)
            node.value.append((key_node, child))
            node = child


def load_text(cls: type[T], text: str, source: str = "<string>", overrides: typing.Sequence[str] = ()) -> T:
    """Build `cls` from YAML text; `source` names the text in error messages."""
    root = _compose(text, source)
    for override in overrides:
        _apply_override(root, override)
    return _Builder(source).build(cls, root, "")


def from_dict(cls: type[T], data: Any, source: str = "<dict>", overrides: typing.Sequence[str] = ()) -> T:
    """Build `cls` from plain Python values (what `to_dict` or `yaml.safe_load` returns) with `load_text`'s checks;
    `source` names the values in error messages."""
    # The values become the node tree `load_text` would compose from their YAML text, without writing that text.
    root = yaml.representer.SafeRepresenter(sort_keys=False).represent_data(data)
    for override in overrides:
        _apply_override(root, override)
    return _Builder(source).build(cls, root, "")


def load(cls: type[T], path: str | Path, overrides: typing.Sequence[str] = ()) -> T:
    """Build `cls` from a YAML file. Raises ConfigError (an InputError) naming the file and line.

    A top-level `include: [file, ...]` (paths relative to the including file) merges shared fragments first; the
    including file's own keys win, mapping by mapping.
    """
    root = _compose_file(Path(path), ())
    for override in overrides:
        _apply_override(root, override)
    return _Builder(str(path)).build(cls, root, "")


def _compose_file(path: Path, including: tuple[Path, ...]) -> yaml.Node:
    try:
        text = path.read_text()
    except OSError as exc:
        where = f" (included from {including[-1]})" if including else ""
        raise ConfigError(f"{path}: cannot read config file{where} ({exc.strerror})") from None
    root = _compose(text, str(path))
    if not isinstance(root, yaml.MappingNode):
        return root
    includes = [(k, v) for k, v in root.value if k.value == "include"]
    if not includes:
        return root
    root.value = [(k, v) for k, v in root.value if k.value != "include"]
    key_node, list_node = includes[0]
    if not isinstance(list_node, yaml.SequenceNode) or not all(isinstance(n, yaml.ScalarNode) for n in list_node.value):
        raise ConfigError(f"{_where(key_node, str(path))}: include: expected a list of file paths")
    merged: yaml.Node | None = None
    for item in list_node.value:
        target = (path.parent / item.value).resolve()
        if target in including or target == path.resolve():
            raise ConfigError(f"{_where(item, str(path))}: include cycle through {target}")
        fragment = _compose_file(target, (*including, path.resolve()))
        merged = fragment if merged is None else _merge(merged, fragment)
    return root if merged is None else _merge(merged, root)


def _named(node: yaml.Node) -> dict[str, yaml.Node] | None:
    """A list of mappings that all have a `name` key, by name; None for any other node."""
    if not isinstance(node, yaml.SequenceNode):
        return None
    names = {}
    for item in node.value:
        name = isinstance(item, yaml.MappingNode) and next((v.value for k, v in item.value if k.value == "name"), None)
        if not isinstance(name, str):
            return None
        names[name] = item
    return names


def _merge(base: yaml.Node, over: yaml.Node) -> yaml.Node:
    """`over` on top of `base`: mappings merge key by key, lists of named mappings (robots) merge by `name`, both
    recursively; anything else is replaced."""
    base_named, over_named = _named(base), _named(over)
    if base_named is not None and over_named is not None:
        merged = [_merge(item, over_named[name]) if name in over_named else item for name, item in base_named.items()]
        merged += [item for name, item in over_named.items() if name not in base_named]
        return yaml.SequenceNode(over.tag, merged, over.start_mark, over.end_mark)
    if not (isinstance(base, yaml.MappingNode) and isinstance(over, yaml.MappingNode)):
        return over
    result = list(base.value)
    for key_node, value_node in over.value:
        for index, (base_key, base_value) in enumerate(result):
            if base_key.value == key_node.value:
                result[index] = (key_node, _merge(base_value, value_node))
                break
        else:
            result.append((key_node, value_node))
    return yaml.MappingNode(base.tag, result, over.start_mark, over.end_mark)


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-friendly Python values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_dict(value) for key, value in obj.items()}
    return obj


def dump(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def save(obj: Any, path: str | Path) -> None:
    """Write a config atomically and durably (acalign_robot.atomic), so a crash never leaves half a file."""
    write_text_atomic(path, dump(obj))
