"""The ``empas`` command line (:mod:`.main`: one subcommand per pipeline step,
plus ``demo``, ``serve``, ``dashboard`` and ``info``) and its YAML/TOML config
files (:mod:`.config_files`)."""

from __future__ import annotations

from .main import COMMANDS, REQUIRED, build_parser, main

__all__ = ["COMMANDS", "REQUIRED", "build_parser", "main"]
