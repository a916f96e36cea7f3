"""The one place that reads configuration: ``config.toml`` (or ``CONFIG_PATH``), then env overrides.

The keys are declared in ``chatbot_site.config_spec``; this module turns the file plus the
environment into the frozen dataclasses there (``settings.py`` is its only caller). A missing file,
an unknown key or a bad value raises :class:`ConfigError` whose message is one line naming the key,
the value and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import environ

from chatbot_site.config_spec import (
    BASE_DIR,
    DEFAULT_CONFIG_PATH,
    NAMED,
    SECTIONS,
    Config,
    ConfigError,
    parse_log_levels,
)

__all__ = ["BASE_DIR", "Config", "ConfigError", "as_settings", "env_names", "load_config", "parse_log_levels"]


def as_settings(config: Config) -> dict[str, Any]:
    """Every key as a Django setting named by its environment variable (one name per knob); a
    named table as the setting named like its section (``OWNERS``, ``MODELS``)."""
    out = {
        f.metadata["env"]: getattr(getattr(config, section), f.name)
        for section, cls in SECTIONS.items()
        for f in fields(cls)
    }
    out.update({section.upper(): getattr(config, section) for section in NAMED})
    return out


def env_names() -> dict[str, str]:
    """Map every override variable to its ``[section] key`` (used by the docs test)."""
    return {
        f.metadata["env"]: f"[{section}] {f.name}" for section, cls in SECTIONS.items() for f in fields(cls)
    }


def named_keys() -> dict[str, list[str]]:
    """Every key of each named table (used by the docs test)."""
    return {section: [f.name for f in fields(cls)] for section, cls in NAMED.items()}


# --- loading -----------------------------------------------------------------------------------


def _coerce_toml(kind: Any, value: Any) -> Any:
    """Check a TOML value's type; TOML already distinguishes bool, int, float, str and arrays."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        # keep_alive may be written as a number of seconds.
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        value = str(value) if ok else value
    else:  # list[str]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise TypeError(f"must be {_type_name(kind)}")
    return value


def _coerce_env(env: environ.Env, name: str, kind: Any) -> Any:
    raw = env.ENVIRON[name]
    if kind is bool:
        if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise TypeError("must be a boolean (true/false)")
        return env.bool(name)
    if kind is str:
        return env.str(name)
    if kind is int or kind is float:
        try:
            return (env.int if kind is int else env.float)(name)
        except ValueError:
            raise TypeError(f"must be {_type_name(kind)}") from None
    return [item for item in env.list(name) if item]


def _type_name(kind: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        kind, "a list of strings"
    )


def load_config(environ_map: Mapping[str, str] | None = None) -> Config:
    """Read the file named by ``CONFIG_PATH`` (default ``config.toml``), then env overrides.

    ``environ_map`` replaces the process environment (and ``.env``) for tests.
    """
    if environ_map is None:
        env_file = BASE_DIR / ".env"
        if env_file.is_file():
            environ.Env.read_env(str(env_file))  # never overrides variables already set
        environ_map = os.environ
    env = environ.Env()
    env.ENVIRON = environ_map
    path = Path(environ_map.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (set CONFIG_PATH or create it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None

    for section, table in data.items():
        if section not in SECTIONS and section not in NAMED:
            names = ", ".join([*SECTIONS, *NAMED])
            raise ConfigError(f"[{section}] in {path}: unknown section (known: {names})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section} in {path}: must be a [section] table")

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"[{section}] {key} in {path}: unknown key (known: {', '.join(sorted(known))})"
                )
        values = {}
        for f in fields(cls):
            kind = hints[f.name]
            entries = _entries_kind(kind)
            kind = list if typing.get_origin(kind) is list else kind
            env_name = f.metadata["env"]
            if entries is not None:
                where, raw = (
                    (f"env {env_name}", environ_map[env_name]) if env_name in environ_map else (str(path), "")
                )
                value: Any = _entries(entries, section, f.name, table, environ_map.get(env_name), path)
            elif env_name in environ_map:
                where, raw = f"env {env_name}", environ_map[env_name]
                try:
                    value = _coerce_env(env, env_name, kind)
                except TypeError as exc:
                    raise ConfigError(f"[{section}] {f.name} = {raw!r} (from {where}): {exc}") from None
            elif f.name in table:
                where, raw = str(path), table[f.name]
                try:
                    value = _coerce_toml(kind, raw)
                except TypeError as exc:
                    raise ConfigError(f"[{section}] {f.name} = {raw!r} (from {where}): {exc}") from None
            else:
                where, raw, value = "default", str(f.default), f.default
            if kind is list:
                value = list(value)
            check = f.metadata["check"]
            problem = check(value) if check else None
            if problem:
                what = (
                    f"[[{section}.{f.name}]]"
                    if entries is not None and not raw
                    else f"[{section}] {f.name} = {raw!r}"
                )
                raise ConfigError(f"{what} (from {where}): {problem}")
            values[f.name] = value
        built[section] = cls(**values)
    for section, cls in NAMED.items():
        built[section] = {
            name: _entry(cls, f"[{section}.{_quoted(name)}]", table, path)
            for name, table in data.get(section, {}).items()
        }
    return Config(**built, source=str(path))


def _entries_kind(kind: Any) -> type | None:
    """The entry dataclass of a ``list[<dataclass>]`` key (``[[ollama.servers]]``), else None."""
    if typing.get_origin(kind) is list:
        (arg,) = typing.get_args(kind)
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _entries(cls: type, section: str, key: str, table: Any, from_env: str | None, path: Path) -> list[Any]:
    """A list of tables (``[[section.key]]``), or from the environment ``name=url,url``."""
    if from_env is not None:
        out = []
        for item in filter(None, (i.strip() for i in from_env.split(","))):
            name, _, url = item.rpartition("=") if "=" in item.split("://")[0] else ("", "", item)
            name = name or (urlparse(url).netloc or url)
            out.append(cls(name=name, url=url))
        return out
    raw = table.get(key, [])
    if not isinstance(raw, list):
        raise ConfigError(f"[{section}] {key} in {path}: must be [[{section}.{key}]] tables")
    return [_entry(cls, f"[[{section}.{key}]] entry {i + 1}", t, path) for i, t in enumerate(raw)]


def _quoted(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else f'"{name}"'


def _entry(cls: type, where: str, table: Any, path: Path) -> Any:
    """One entry of a named table (``[owners.alice]``) or of a list of tables; unknown keys and bad
    values name it."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} in {path}: must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where} {key} in {path}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for f in fields(cls):
        if f.name not in table:
            continue
        raw = table[f.name]
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        try:
            value = _coerce_toml(kind, raw)
        except TypeError as exc:
            raise ConfigError(f"{where} {f.name} = {raw!r} (from {path}): {exc}") from None
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{where} {f.name} = {raw!r} (from {path}): {problem}")
        values[f.name] = value
    return cls(**values)
