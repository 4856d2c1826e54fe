"""Configuration objects: one dataclass per stage, serialisable to JSON.

Every stage (flow assembly, features, de-biasing, dataset building, model, training, serving)
has one configuration dataclass that derives from `Config`. A configuration is stored with every
dataset and checkpoint it produced, so a result can always be traced to its settings.

`Config.from_dict` is strict: an unknown key is an error that names the key and the accepted
ones, because a silently ignored setting is a result nobody can trust.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value or key is not valid."""


class Config:
    """Mixin for dataclass configurations: nested to/from dict and JSON, strict keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(hints[name], value) for name, value in data.items()}
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some settings changed (unknown names raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown setting(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _coerce(hint: Any, value: Any) -> Any:
    """Turn JSON values back into the declared types (nested configs, tuples)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (ConfigError, TypeError, ValueError):
                continue
        return value
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=False))
    if origin is list and isinstance(value, list | tuple):
        (arg,) = typing.get_args(hint) or (Any,)
        return [_coerce(arg, v) for v in value]
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool) and isinstance(value, str):
        return _parse_scalar(hint, value)
    return value


def _parse_scalar(hint: type, text: str) -> Any:
    """A number or boolean given as text (command lines, environment variables)."""
    word = text.strip().lower()
    try:
        if hint is bool:
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return hint(float(word)) if hint is int and "e" in word else hint(word)
    except ValueError:
        raise ConfigError(f"{text!r} is not a valid {hint.__name__}") from None
