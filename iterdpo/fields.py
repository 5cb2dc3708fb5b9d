"""Config fields: help text, ranges and coercion, checked when a section is built.

``F(default, help, min=, max=, gt=, choices=)`` declares a field; ``_Section`` (every stage's config
derives from it) coerces what YAML and the command line give, checks each field's range and choices,
then the section's own ``validate``. A bad value raises ``ConfigError`` naming section, field and why.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def F(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (lists and dicts get a copying default factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check(cond: bool, section: str, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={value!r}: {why}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}


def _coerce(section: str, f: dataclasses.Field, v: Any) -> Any:
    """Accept what YAML and the command line give ('5e-4' is a string to YAML 1.1); reject wrong types
    and non-finite floats (inf and nan pass every range check, then fail late or silently)."""
    v = _coerce_type(section, f, v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{section}.{f.name}={v!r}: must be a finite number")
    return v


def _coerce_type(section: str, f: dataclasses.Field, v: Any) -> Any:
    want = _TYPES.get(str(f.type))
    if want is None or isinstance(v, want) and not (want is int and isinstance(v, bool)):
        return v
    if want is float and isinstance(v, (int, str)) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            pass
    if want is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if want is int and isinstance(v, str):  # '1e12' is a string to YAML 1.1; range checks then apply
        try:
            if float(v).is_integer():
                return int(float(v))
        except (ValueError, OverflowError):
            pass
    if want is list and isinstance(v, (str, int, float)):
        return [v]
    raise ConfigError(f"{section}.{f.name}={v!r}: expected {want.__name__}")


def _checked(section: str, f: dataclasses.Field, v: Any) -> Any:
    """`v` coerced to the field's type and checked against its choices and range (metadata gt, min, max)."""
    v = _coerce(section, f, v)
    if isinstance(v, list) and "of" in f.metadata:  # a nested or mistyped element fails here, not in a stage
        want = f.metadata["of"]
        for x in v:
            _check(isinstance(x, want) and not isinstance(x, bool), section, f.name, v,
                   f"every element must be a {want.__name__}, not {type(x).__name__}")
    if isinstance(v, list) and f.metadata.get("nonempty"):
        _check(len(v) > 0, section, f.name, v, "must name at least one")
    if "choices" in f.metadata and not isinstance(v, list):
        _check(v in f.metadata["choices"], section, f.name, v, f"must be one of {f.metadata['choices']}")
    if "gt" in f.metadata and v is not None:
        _check(v > f.metadata["gt"], section, f.name, v, f"must be > {f.metadata['gt']}")
    if "min" in f.metadata and v is not None:
        _check(v >= f.metadata["min"], section, f.name, v, f"must be >= {f.metadata['min']}")
    if "max" in f.metadata and v is not None:
        _check(v <= f.metadata["max"], section, f.name, v, f"must be <= {f.metadata['max']}")
    return v


class _Section:
    """Mixin: checks declared ranges and choices, and converts to and from plain dicts."""

    section = "?"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(self.section, f, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override where needed."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.section}: expected a mapping of field: value, got {type(d).__name__} {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{cls.section}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def _bounds(meta: dict) -> str:
    low = f"> {meta['gt']}" if "gt" in meta else f">= {meta['min']}" if "min" in meta else ""
    high = f"<= {meta['max']:_}" if "max" in meta else ""
    return f" (range: {', '.join(b for b in (low, high) if b)})" if low or high else ""


def _number(v: Any) -> Any:
    """A numeric string as a float; anything else unchanged (for the checks that follow to name it)."""
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: a few hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            raise ConfigError(f"YAML alias *{anchor} (line {self.peek_event().start_mark.line + 1}): aliases are not "
                              "accepted in presets or --set (they can expand without bound); write the values out")
        return super().compose_node(parent, index)


def load_yaml(text: str):
    """YAML as plain values, without aliases (ConfigError on one)."""
    return yaml.load(text, Loader=_NoAliases)


def parse_override(text: str) -> tuple[str, Any]:
    """'dpo.beta=0.2' -> ('dpo.beta', 0.2); values are parsed as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), load_yaml(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None
