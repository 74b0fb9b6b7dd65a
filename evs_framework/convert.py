"""Strict loading of plain data (parsed YAML/JSON) into frozen attrs classes.

Unknown keys and wrong types are errors, never silently coerced ("0.4" is not a number here); every
problem is reported at once with its path, e.g. `$.settings.stable_steps[0]`.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import attrs
import cattrs
import cattrs.gen
from cattrs.errors import (AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError,
                           IterableValidationError, IterableValidationNote)

from evs_framework.errors import SpecError, did_you_mean, short_repr, written

_PRIMITIVES = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}
TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _primitive_hook(kind):
    accepts = _PRIMITIVES[kind]

    def structure(value, _):
        if not accepts(value):
            raise TypeError(f"expected {TYPE_WORDS[kind]}, got {written(value)}")
        return float(value) if kind is float else value

    return structure


def _union_parts(t):
    """(primitive members, the one attrs class member or None) of a union, or None for other types."""
    if typing.get_origin(t) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(t)
    primitives = tuple(a for a in args if a in _PRIMITIVES)
    classes = [a for a in args if attrs.has(a)]
    if len(primitives) + len(classes) != len(args) or len(classes) > 1:
        return None
    return primitives, (classes[0] if classes else None)


def _union_hook(t):
    members, record = _union_parts(t)

    def structure(value, _):
        if record is not None and isinstance(value, dict):
            return CONVERTER.structure(value, record)
        for member in members:
            if _PRIMITIVES[member](value):
                return float(value) if member is float and not isinstance(value, float) and int not in members else value
        words = " or ".join([TYPE_WORDS[m] for m in members] + (["a mapping"] if record else []))
        raise TypeError(f"expected {words}, got {written(value)}")

    return structure


def _structure_path(value, _) -> Path:
    text = _primitive_hook(str)(value, None)
    if not text or "\x00" in text:
        raise ValueError(f"{short_repr(text)} is not a usable path; give a file or folder name")
    return Path(text)


def _is_sequence(t) -> bool:
    return typing.get_origin(t) in (tuple, list)


def _sequence_hook(t):
    """Lists only: cattrs would split a string into characters (`mp4_files: "ab"` as two videos)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)

    def structure(value, _):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {written(value)}; write it as [...]")
        if fixed and len(value) != len(args):
            raise TypeError(f"expected a list of {len(args)} values, got {len(value)}")
        items, errors = [], []
        for index, (item, kind) in enumerate(zip(value, args if fixed else [args[0]] * len(value))):
            try:
                items.append(CONVERTER.structure(item, kind))
            except Exception as exc:  # noqa: BLE001 - collected and re-raised with its index, as cattrs does
                exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"@ index {index}", index, kind)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"while structuring {t!r}", errors, t)
        return tuple(items) if origin is tuple else items

    return structure


def _mapping_hook(t):
    """Mappings only, each value structured with its key in the error path."""
    key_type, value_type = typing.get_args(t) or (str, object)

    def structure(value, _):
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of keys to values, got {written(value)}")
        items, errors = {}, []
        for key, item in value.items():
            try:
                items[CONVERTER.structure(key, key_type)] = CONVERTER.structure(item, value_type)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised with its key, as cattrs does
                exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"@ key {key!r}", str(key), value_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"while structuring {t!r}", errors, t)
        return items

    return structure


def _record_hook(cls):
    """attrs classes from mappings only (cattrs' own error for `settings: null` is Python's, not ours)."""
    fields = cattrs.gen.make_dict_structure_fn(cls, CONVERTER, _cattrs_forbid_extra_keys=True)

    def structure(value, _):
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of keys to values, got {written(value)}")
        return fields(value, cls)

    return structure


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (bool, int, float, str):
        converter.register_structure_hook(kind, _primitive_hook(kind))
    converter.register_structure_hook_factory(lambda t: _union_parts(t) is not None, _union_hook)
    converter.register_structure_hook_factory(_is_sequence, _sequence_hook)
    converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is dict or t is dict, _mapping_hook)
    converter.register_structure_hook_factory(attrs.has, _record_hook)
    converter.register_structure_hook(Path, _structure_path)
    return converter


CONVERTER = make_converter()


def _problems(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' nested errors into 'path: message' lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return _unknown_keys(exc.extra_fields, exc.cl, path)
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        lines = []
        for inner in exc.exceptions:
            notes = getattr(inner, "__notes__", [])
            note = next((n for n in notes if isinstance(n, (AttributeValidationNote, IterableValidationNote))), None)
            if isinstance(note, AttributeValidationNote):
                lines += _problems(inner, f"{path}.{note.name}")
            elif isinstance(note, IterableValidationNote):
                key = note.index
                lines += _problems(inner, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
            else:
                lines += _problems(inner, path)
        return lines
    if isinstance(exc, KeyError):
        return [f"{path}: required key is missing"]
    return [f"{path}: {exc}"]


def _unknown_keys(keys, cls, path: str) -> list[str]:
    """A problem for each key that attrs class `cls` does not have, with the known keys it is closest to."""
    known = [a.alias for a in attrs.fields(cls)]
    return [f"{path}: unknown key {key!r}{did_you_mean(key, known)}; fix or drop it" for key in sorted(map(str, keys))]


def structure(data, cls, source: str, path: str = "$"):
    """`data` as an instance of `cls`, or SpecError listing every problem with its path."""
    try:
        return CONVERTER.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise SpecError(_problems(exc, path), source) from None
    except (TypeError, ValueError) as exc:
        raise SpecError([f"{path}: {exc}"], source) from None


def structure_fields(data, cls, path: str = "$") -> tuple[dict, list[str]]:
    """Structure each top-level key of `data` as the matching field of `cls` on its own: (the values that
    structured, every problem), so one bad key does not hide the problems of the others."""
    if not isinstance(data, dict):
        return {}, [f"{path}: expected a mapping of keys to values, got {written(data)}"]
    attrs.resolve_types(cls)
    fields = {field.alias: field for field in attrs.fields(cls)}
    problems = _unknown_keys(set(map(str, data)) - set(fields), cls, path)
    values = {}
    for alias, field in fields.items():
        if alias not in data:
            if field.default is attrs.NOTHING:
                problems.append(f"{path}.{alias}: required key is missing")
            continue
        try:
            values[alias] = CONVERTER.structure(data[alias], field.type)
        except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
            problems += _problems(exc, f"{path}.{alias}")
        except (TypeError, ValueError) as exc:
            problems.append(f"{path}.{alias}: {exc}")
    return values, problems
