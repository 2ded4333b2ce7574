"""Config files (YAML and TOML) for every command: values reach the command, the
command line wins, and bad files or keys exit 2 with a message naming them."""

from __future__ import annotations

import json

import pytest

from empas.cli import REQUIRED, build_parser, main
from empas.cli.config_files import ConfigError, load_config


def _printed(capsys) -> dict:
    """--print-config output (`command:` then `  key: <json>` lines) as a dict."""
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(":")
    return {k.strip(): json.loads(v) for k, v in (ln.split(":", 1) for ln in lines[1:])}


def test_yaml_sections_top_level_and_command_line_override(tmp_path, capsys):
    cfg = tmp_path / "empas.yaml"
    cfg.write_text(
        "seed: 3          # top level: every command with --seed\n"
        "generations: 7\n"
        "search:\n"
        "  profile: example:tinyllama\n"
        "  out: results\n"
        "  pop-size: 50   # dashes or underscores\n"
        "  generations: 9 # the section beats the top level\n"
        "  bits: [2, 4, 8]\n"
        "  pin: {model.layers.0: 8}\n"
        "  latency: true\n"
        "serve:\n"
        "  port: 9000     # another command's section: ignored by search\n"
    )
    assert main(["search", "--config", str(cfg), "--print-config"]) == 0
    got = _printed(capsys)
    assert got["profile"] == "example:tinyllama" and got["out"] == "results"
    assert got["pop_size"] == 50 and got["generations"] == 9 and got["seed"] == 3
    assert got["bits"] == "2,4,8" and got["pin"] == ["model.layers.0=8"] and got["latency"]
    assert main(["search", "--config", str(cfg), "--seed", "11", "-o", "x", "--print-config"]) == 0
    got = _printed(capsys)
    assert got["seed"] == 11 and got["out"] == "x" and got["pop_size"] == 50


def test_toml_config_runs_the_command(tmp_path, capsys):
    cfg = tmp_path / "empas.toml"
    out = tmp_path / "out"
    cfg.write_text(
        f'[search]\nprofile = "example:tinyllama"\nout = "{out}"\nmethod = "exact"\n'
        'budget = "600MB"\n'
    )
    assert main(["search", "--config", str(cfg)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["config"]["method"] == "exact" and doc["config"]["max_bytes"] == 600_000_000


@pytest.mark.parametrize(
    "command,key,value",
    [
        ("demo", "budget", "7MB"),
        ("demo", "bits", [2, 4]),
        ("profile", "units", "sublayer"),
        ("verify", "plans", ["a.json", "b.json"]),
        ("export", "format", "llama.cpp"),
        ("serve", "max_concurrency", 3),
        ("dashboard", "port", 8600),
        ("info", "path", "example:tinyllama"),
    ],
)
def test_every_command_takes_a_config(tmp_path, capsys, command, key, value):
    cfg = tmp_path / "c.yaml"
    import yaml

    required = {"model": "m", "out": "o", "plan": "p.json", "format": "plan", "path": "x"}
    section = {k: required[k] for k in REQUIRED.get(command, [])}
    section[key] = value
    cfg.write_text(yaml.safe_dump({command: section}))
    assert main([command, "--config", str(cfg), "--print-config"]) == 0
    got = _printed(capsys)
    want = ",".join(map(str, value)) if key == "bits" else value
    assert got[key] == want


@pytest.mark.parametrize(
    "text,suffix,message",
    [
        ("search:\n  pop_sise: 3\n", ".yaml", "unknown option 'pop_sise'"),
        ("serch:\n  pop_size: 3\n", ".yaml", "unknown option 'serch'"),
        ("search: [1, 2\n", ".yaml", "not valid YAML"),
        ("[search\n", ".toml", "not valid TOML"),
        ("- 1\n- 2\n", ".yaml", "top level must be a mapping"),
        ("search: 3\n", ".yaml", "section 'search' must be a mapping"),
        ("search:\n  pop_size: many\n", ".yaml", "invalid value 'many'"),
        ("search:\n  pop_size: 2.5\n", ".yaml", "must be an integer"),
        ("search:\n  pop_size: true\n", ".yaml", "must be a number"),
        ("search:\n  force: 'yes'\n", ".yaml", "must be true or false"),
        ("search:\n  method: random\n", ".yaml", "'random' is not one of"),
        ("search:\n  bits: [2, x]\n", ".yaml", "list of integers"),
        ("search:\n  out: {a: 1}\n", ".yaml", "must be a single value"),
        ("search = 1\n", ".ini", "are .yaml, .yml or .toml"),
    ],
)
def test_bad_config_files_exit_2(tmp_path, capsys, text, suffix, message):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    rc = main(["search", "example:tinyllama", "-o", str(tmp_path / "o"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and str(cfg) in err
    assert not (tmp_path / "o").exists()


def test_missing_config_and_missing_required(tmp_path, capsys):
    assert main(["search", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SystemExit) as info:
        main(["search", "--config", str(empty)])
    assert info.value.code == 2
    assert "required: profile, --out" in capsys.readouterr().err


def test_load_config_errors_are_value_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "x.yaml")
    assert issubclass(ConfigError, ValueError)


def test_help_has_examples_and_exit_codes(capsys):
    parser, subs = build_parser()
    for name, sub in subs.items():
        text = sub.format_help()
        assert "--config" in text and "examples:" in text and "exit codes" in text, name
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
