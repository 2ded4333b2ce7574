"""Config files for the command line: every option of every ``empas`` command can
be set in a YAML or TOML file and overridden on the command line.

    # empas.yaml                      empas search --config empas.yaml --seed 3
    search:                           # a section per command ...
      profile: out/profile.json
      out: out/search
      pop_size: 200
      bits: [2, 3, 4, 8]              # lists or "2,3,4,8"
    seed: 1                           # ... and top-level keys: every command that has them

Keys are the long option names with ``-`` or ``_`` (``pop-size`` / ``pop_size``)
and the positional arguments by name (``profile``, ``model``, ``plan``).
Precedence: command line > the command's section > top-level keys > defaults.
A key that no command knows is an error (a typo must not be silently ignored);
a key of another command is ignored by this one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "actions", "apply_config", "convert", "load_config"]


class ConfigError(ValueError):
    """A config file that cannot be read, or a key or value that does not fit."""


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ConfigError(
                    f"{p}: TOML config files need Python >= 3.11 (or `pip install tomli`); "
                    "use YAML instead"
                ) from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{p}: YAML config files need PyYAML (`pip install pyyaml`)"
            ) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        if doc is None:
            doc = {}
    else:
        raise ConfigError(
            f"{p}: config files are .yaml, .yml or .toml, not {suffix or 'no suffix'}"
        )
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of option names to values")
    return dict(doc)


def _key(k: str) -> str:
    return str(k).strip().replace("-", "_")


def actions(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    skip = (argparse._HelpAction, argparse._VersionAction)
    return {
        a.dest: a
        for a in sub._actions
        if not isinstance(a, skip) and a.dest not in ("config", "print_config", "config_dir")
    }


def _flag(a: argparse.Action) -> str:
    return a.option_strings[-1] if a.option_strings else a.dest


def _convert_one(a: argparse.Action, v: Any, where: str) -> Any:
    name = f"{where}: {a.dest!r}"
    if isinstance(v, (dict, list)):
        raise ConfigError(f"{name} must be a single value, got {type(v).__name__}")
    if isinstance(v, bool) and a.type in (int, float):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    if a.type is int and isinstance(v, float):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if a.type is not None and a.type is not str:
        try:
            v = a.type(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{name}: invalid value {v!r} ({exc})") from None
    elif not isinstance(v, str):
        if isinstance(v, bool):
            raise ConfigError(f"{name} must be text, got {v!r}")
        v = str(v)
    if a.choices is not None and v not in a.choices:
        raise ConfigError(f"{name}: {v!r} is not one of {', '.join(map(str, a.choices))}")
    return v


def convert(a: argparse.Action, v: Any, where: str) -> Any:
    """``v`` from a config file or an override as ``a`` takes it; errors say ``where``."""
    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: {a.dest!r} must be true or false, got {v!r}")
        return v
    if isinstance(a, argparse._AppendAction) or a.nargs in ("+", "*"):
        items = v if isinstance(v, list) else [v]
        if isinstance(a, argparse._AppendAction) and isinstance(v, Mapping):  # pin: {unit: bits}
            items = [f"{k}={b}" for k, b in v.items()]
        return [_convert_one(a, x, where) for x in items]
    if isinstance(v, list) and getattr(a, "comma_list", False):
        # options written as comma-separated text on the command line ("2,3,4,8")
        ints = a.comma_list == "int"
        if ints and not all(
            (isinstance(x, int) and not isinstance(x, bool))
            or (isinstance(x, str) and x.strip().lstrip("-").isdigit())
            for x in v
        ):
            raise ConfigError(f"{where}: {a.dest!r} must be a list of integers, got {v!r}")
        if not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{where}: {a.dest!r} must be a list of names, got {v!r}")
        v = ",".join(str(x) for x in v)
    return _convert_one(a, v, where)


def apply_config(
    parser: argparse.ArgumentParser,
    subparsers: Mapping[str, argparse.ArgumentParser],
    command: str,
    doc: Mapping[str, Any],
    path: str,
) -> dict[str, Any]:
    """Sets the defaults of ``command``'s parser from a config mapping (so that the
    command line still wins) and returns the values it took."""
    sub = subparsers[command]
    acts = actions(sub)
    known_anywhere: set[str] = set()
    for s in subparsers.values():
        known_anywhere |= set(actions(s))
    values: dict[str, Any] = {}
    top = {k: v for k, v in doc.items() if _key(k) not in subparsers}
    for k in top:
        if _key(k) not in known_anywhere:
            raise ConfigError(f"{path}: unknown option {k!r} (no empas command has it)")
    for k, v in top.items():
        if _key(k) in acts:
            values[_key(k)] = convert(acts[_key(k)], v, path)
    for sect_name, sect in doc.items():
        if _key(sect_name) not in subparsers:
            continue
        if not isinstance(sect, Mapping):
            raise ConfigError(f"{path}: section {sect_name!r} must be a mapping of options")
        if _key(sect_name) != command:
            continue
        for k, v in sect.items():
            if _key(k) not in acts:
                raise ConfigError(
                    f"{path}: [{sect_name}] has unknown option {k!r}; `empas {command} --help` "
                    "lists them"
                )
            values[_key(k)] = convert(acts[_key(k)], v, f"{path} [{sect_name}]")
    sub.set_defaults(**values)
    return values


def required_missing(
    sub: argparse.ArgumentParser, ns: argparse.Namespace, required: list[str]
) -> list[str]:
    """The required options (by dest) that neither the command line nor a config
    file gave, as the user would write them."""
    acts = actions(sub)
    return [_flag(acts[d]) for d in required if getattr(ns, d, None) in (None, [], "")]
