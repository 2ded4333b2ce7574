"""Hydra-style configuration for the command line: config groups and ``key=value``
overrides, composed with ``--config FILE`` and the ``--option value`` flags.

    empas search profile.json -o out search=fast pop_size=200 seed=3
    empas demo model=tiny_llama profile=fast search=thorough --print-config

* ``group=option`` selects ``<group>/<option>.yaml`` from ``--config-dir DIR``
  (when given) or the groups shipped in ``empas/conf`` (search, profile, verify,
  model). A group file is a flat mapping of options for the commands the group
  configures (:data:`GROUPS`).
* ``key=value`` sets one option of the command (``pop_size=200``, ``bits=[2,4,8]``,
  ``budget=7MB``, ``latency=true``; values are read as YAML scalars or lists);
  ``group.key=value`` / ``command.key=value`` name the option's group or command.
* A ``--config FILE`` may select groups with a ``defaults:`` list, as in Hydra
  (``defaults: [{search: fast}, {model: smollm2}]``); the command line's selection of
  the same group wins.

Precedence, lowest first: the built-in defaults < the selected group files < the
``--config`` file < ``key=value`` overrides < ``--option value`` flags. An unknown
key, a bad value, an unknown group or a missing group file is an error naming the key
and the file (or "command line")."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config_files import ConfigError, actions, convert, load_config

__all__ = ["GROUPS", "Composed", "compose", "group_options", "split_overrides"]

# group -> the commands it configures
GROUPS: dict[str, tuple[str, ...]] = {
    "search": ("search", "demo"),
    "profile": ("profile", "demo"),
    "verify": ("verify", "demo"),
    "model": ("profile", "verify", "demo", "serve", "export", "latency"),
}

PACKAGED = Path(__file__).resolve().parent.parent / "conf"

_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*)=(.*)$", re.S)


def _key(k: str) -> str:
    return str(k).strip().replace("-", "_")


def split_overrides(
    argv: Sequence[str], subparsers: Mapping[str, argparse.ArgumentParser]
) -> tuple[list[str], list[str]]:
    """Separates the ``key=value`` tokens after the command from the rest of the
    command line (a token that is the value of an option, ``--pin b0=4``, stays)."""
    rest: list[str] = []
    overrides: list[str] = []
    sub = None
    takes_value: set[str] = set()
    for i, tok in enumerate(argv):
        if sub is None:
            rest.append(tok)
            if tok in subparsers:
                sub = subparsers[tok]
                takes_value = {s for a in sub._actions if a.nargs != 0 for s in a.option_strings}
            continue
        prev = argv[i - 1] if i > 0 else ""
        if _OVERRIDE.match(tok) and not tok.startswith("-") and prev not in takes_value:
            overrides.append(tok)
        else:
            rest.append(tok)
    return rest, overrides


def group_options(group: str, config_dir: str | None = None) -> list[str]:
    """The options of a config group, from ``config_dir`` and the packaged groups."""
    names: set[str] = set()
    for d in _dirs(config_dir):
        if (d / group).is_dir():
            names |= {p.stem for p in (d / group).glob("*.yaml")}
    return sorted(names)


def _dirs(config_dir: str | None) -> list[Path]:
    return ([Path(config_dir)] if config_dir else []) + [PACKAGED]


def _group_file(group: str, option: str, config_dir: str | None, where: str) -> Path:
    if group not in GROUPS:
        raise ConfigError(f"{where}: unknown config group {group!r} (groups: {', '.join(GROUPS)})")
    if not isinstance(option, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", option):
        raise ConfigError(f"{where}: {group}={option!r} must name a file of the group")
    for d in _dirs(config_dir):
        p = d / group / f"{option}.yaml"
        if p.is_file():
            return p
    looked = ", ".join(str(d / group) for d in _dirs(config_dir))
    raise ConfigError(
        f"{where}: no config {option!r} in group {group!r} (looked in {looked}); "
        f"options: {', '.join(group_options(group, config_dir)) or 'none'}"
    )


def _parse_value(text: str) -> Any:
    try:
        import yaml
    except ImportError:  # without PyYAML values stay text (argparse converts them)
        return text
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


class Composed:
    """What :func:`compose` took: the group selections (group -> (option, file)) and
    the option values (dest -> value) with where each came from."""

    def __init__(self) -> None:
        self.groups: dict[str, tuple[str, Path]] = {}
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def set(self, dest: str, value: Any, source: str) -> None:
        self.values[dest] = value
        self.sources[dest] = source


def _defaults_list(doc: Mapping[str, Any], path: str) -> dict[str, str]:
    """A config file's Hydra ``defaults:`` list: [{group: option}, ...] or a mapping."""
    d = doc.get("defaults")
    if d is None:
        return {}
    items: list[tuple[Any, Any]] = []
    if isinstance(d, Mapping):
        items = list(d.items())
    elif isinstance(d, list):
        for x in d:
            if x == "_self_":
                continue
            if not isinstance(x, Mapping) or len(x) != 1:
                raise ConfigError(
                    f"{path}: each entry of 'defaults' is one 'group: option', got {x!r}"
                )
            items.extend(x.items())
    else:
        raise ConfigError(f"{path}: 'defaults' must be a list of 'group: option' entries")
    return {str(g): o for g, o in items}


def compose(
    parser: argparse.ArgumentParser,
    subparsers: Mapping[str, argparse.ArgumentParser],
    command: str,
    overrides: Sequence[str],
    config_file: str | None,
    config_dir: str | None,
) -> Composed:
    """Sets the command's defaults from the selected groups, the config file and the
    ``key=value`` overrides (see the module docstring); ``--option value`` flags,
    parsed afterwards, win over all of them."""
    from .config_files import apply_config

    sub = subparsers[command]
    acts = actions(sub)
    out = Composed()
    doc: dict[str, Any] = {}
    if config_file:
        doc = load_config(config_file)
    # 1. which group options: the file's defaults list, then the command line
    selected: dict[str, tuple[Any, str]] = {
        g: (o, config_file or "") for g, o in _defaults_list(doc, config_file or "").items()
    }
    plain: list[tuple[str, str, str]] = []  # (key, raw value, token)
    for tok in overrides:
        m = _OVERRIDE.match(tok)
        assert m is not None
        key, raw = m.group(1), m.group(2)
        if key in GROUPS:
            selected[key] = (raw, "command line")
        else:
            plain.append((key, raw, tok))
    for group, (_, where) in selected.items():
        if group not in GROUPS:
            raise ConfigError(
                f"{where}: unknown config group {group!r} (groups: {', '.join(GROUPS)})"
            )
    # 2. the group files, in a fixed order
    for group in GROUPS:
        if group not in selected:
            continue
        option, where = selected[group]
        if command not in GROUPS[group]:
            if where != "command line":  # a file shared by several commands
                continue
            raise ConfigError(
                f"{where}: config group {group!r} does not apply to `empas {command}` "
                f"(it configures {', '.join('empas ' + c for c in GROUPS[group])})"
            )
        path = _group_file(group, option, config_dir, where)
        gdoc = load_config(path)
        out.groups[group] = (str(option), path)
        known = set().union(*(actions(subparsers[c]) for c in GROUPS[group]))
        for k, v in gdoc.items():
            if _key(k) not in known:
                raise ConfigError(
                    f"{path}: unknown option {k!r} (the {group!r} group configures "
                    f"{', '.join('empas ' + c for c in GROUPS[group])})"
                )
            if _key(k) in acts:
                out.set(_key(k), convert(acts[_key(k)], v, str(path)), f"{group}={option}")
    sub.set_defaults(**out.values)
    # 3. the config file (its own keys win over the groups)
    if config_file:
        body = {k: v for k, v in doc.items() if k != "defaults"}
        for dest, v in apply_config(parser, subparsers, command, body, config_file).items():
            out.set(dest, v, config_file)
    # 4. key=value on the command line
    cli: dict[str, Any] = {}
    for key, raw, tok in plain:
        where = f"command line {tok!r}"
        scope, _, name = key.rpartition(".")
        name = _key(name)
        if scope:
            if scope in subparsers and scope not in GROUPS:
                commands: tuple[str, ...] = (scope,)
            elif scope in GROUPS:
                commands = GROUPS[scope] + ((scope,) if scope in subparsers else ())
            else:
                raise ConfigError(
                    f"{where}: unknown group or command {scope!r} in {key!r} (groups: "
                    f"{', '.join(GROUPS)}; commands: {', '.join(subparsers)})"
                )
            if not any(name in actions(subparsers[c]) for c in commands):
                raise ConfigError(f"{where}: unknown option {name!r} for {scope!r}")
            if command not in commands or name not in acts:
                continue  # an option of another command of the scope
        if name not in acts:
            raise ConfigError(
                f"{where}: unknown option {name!r} for `empas {command}` "
                f"(`empas {command} --help` lists them)"
            )
        v = _parse_value(raw)
        cli[name] = None if v is None else convert(acts[name], v, where)
        out.set(name, cli[name], "command line")
    sub.set_defaults(**cli)
    return out
