"""Hydra-style config groups and key=value overrides on the command line (issue 19):
the merged options, their precedence, and errors that name the key and the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from empas.cli import build_parser, main
from empas.cli.config_files import actions, load_config
from empas.cli.config_groups import GROUPS, PACKAGED, split_overrides


def _printed(capsys) -> tuple[list[str], dict]:
    """--print-config output: the comment lines, and `  key: <json>` lines as a dict."""
    lines = capsys.readouterr().out.splitlines()
    comments = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0].endswith(":")
    return comments, {k.strip(): json.loads(v) for k, v in (ln.split(":", 1) for ln in body[1:])}


def test_issue_example_group_and_key_override(capsys):
    """`empas search profile.json pop_size=200 search=fast`: the group's generations,
    the override's population (whatever the order on the line)."""
    assert (
        main(["search", "p.json", "-o", "out", "pop_size=200", "search=fast", "--print-config"])
        == 0
    )
    comments, got = _printed(capsys)
    fast = load_config(PACKAGED / "search" / "fast.yaml")
    assert got["pop_size"] == 200 and fast["pop_size"] != 200
    assert got["generations"] == fast["generations"] != 50
    assert got["profile"] == "p.json" and got["out"] == "out"
    assert comments and "search=fast" in comments[0] and "fast.yaml" in comments[0]


def test_precedence_groups_file_override_flag(tmp_path, capsys):
    """group < --config file (its defaults list selects groups) < key=value < --option."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "defaults:\n  - search: thorough\n  - model: smollm2\n"
        "search:\n  generations: 11\n  seed: 5\n"
    )
    argv = ["search", "p.json", "-o", "o", "--config", str(cfg), "--print-config"]
    assert main(argv) == 0
    _, got = _printed(capsys)
    thorough = load_config(PACKAGED / "search" / "thorough.yaml")
    assert got["pop_size"] == thorough["pop_size"]  # from the group the file selected
    assert got["generations"] == 11  # the file beats its group
    assert main(argv + ["generations=12", "seed=6", "--seed", "7"]) == 0
    _, got = _printed(capsys)
    assert got["generations"] == 12 and got["seed"] == 7  # override > file; flag > override
    # the command line's selection of a group replaces the file's
    assert main(argv + ["search=fast"]) == 0
    _, got = _printed(capsys)
    assert got["pop_size"] == load_config(PACKAGED / "search" / "fast.yaml")["pop_size"]


def test_groups_configure_demo_and_values_are_typed(capsys):
    argv = [
        "demo",
        "model=tiny_llama",
        "profile=fast",
        "verify=memory",
        "search.generations=7",  # a group-scoped key
        "verify.max_tokens=99",  # an option of verify, not demo: ignored by demo
        "bits=[2, 4]",
        "budget=7MB",
        "threads=null",
        "--print-config",
    ]
    assert main(argv) == 0
    _, got = _printed(capsys)
    assert got["model"] == "example:tiny-llama"
    assert got["n_tokens"] == load_config(PACKAGED / "profile" / "fast.yaml")["n_tokens"]
    assert got["memory"] is True and got["generations"] == 7
    assert got["bits"] == "2,4" and got["budget"] == "7MB" and got["threads"] is None
    assert "max_tokens" not in got


def test_option_values_after_flags_are_not_overrides(capsys):
    """`--pin b0=4` is the value of --pin, not a key=value override."""
    _, subs = build_parser()
    rest, over = split_overrides(["search", "p", "--pin", "b0=4", "seed=2"], subs)
    assert rest == ["search", "p", "--pin", "b0=4"] and over == ["seed=2"]
    assert main(["search", "p", "-o", "o", "--pin", "b0=4", "latency=true", "--print-config"]) == 0
    _, got = _printed(capsys)
    assert got["pin"] == ["b0=4"] and got["latency"] is True


def test_config_dir_adds_groups(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "mine.yaml").write_text("pop_size: 33\nseed: 4\n")
    argv = ["search", "p", "-o", "o", "--config-dir", str(tmp_path), "search=mine"]
    assert main(argv + ["--print-config"]) == 0
    comments, got = _printed(capsys)
    assert got["pop_size"] == 33 and got["seed"] == 4
    assert str(tmp_path / "search" / "mine.yaml") in comments[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["search=fastest"], "no config 'fastest' in group 'search'"),
        (["search=fastest"], "fast, thorough"),  # the options there are
        (["pop_sise=3"], "unknown option 'pop_sise' for `empas search`"),
        (["pop_size=abc"], "'pop_size': invalid value 'abc'"),
        (["method=genetic"], "'genetic' is not one of nsga2, exact"),
        (["latency=maybe"], "'latency' must be true or false"),
        (["profile=fast"], "config group 'profile' does not apply to `empas search`"),
        (["nosuch.seed=1"], "unknown group or command 'nosuch'"),
        (["search.port=1"], "unknown option 'port' for 'search'"),
    ],
)
def test_bad_overrides_exit_2_naming_the_key(capsys, args, message):
    assert main(["search", "p", "-o", "o", *args, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and "command line" in err


def test_bad_group_file_and_defaults_name_the_file(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    bad = tmp_path / "search" / "typo.yaml"
    bad.write_text("pop_sise: 10\n")
    argv = ["search", "p", "-o", "o", "--config-dir", str(tmp_path), "search=typo"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown option 'pop_sise'" in err
    wrong = tmp_path / "search" / "wrong.yaml"
    wrong.write_text("generations: lots\n")
    assert main(argv[:-1] + ["search=wrong"]) == 2
    err = capsys.readouterr().err
    assert str(wrong) in err and "'generations'" in err
    cfg = tmp_path / "run.yaml"
    cfg.write_text("defaults:\n  - search: nope\n")
    assert main(["search", "p", "-o", "o", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "no config 'nope' in group 'search'" in err
    cfg.write_text("defaults:\n  - colour: red\n")
    assert main(["search", "p", "-o", "o", "--config", str(cfg)]) == 2
    assert "unknown config group 'colour'" in capsys.readouterr().err


def test_packaged_groups_are_valid_and_defaults_match_the_parser():
    """Every shipped group file only names options of the commands its group
    configures; the default.yaml files say what the parser's defaults are."""
    _, subs = build_parser()
    for group, commands in GROUPS.items():
        files = sorted((PACKAGED / group).glob("*.yaml"))
        assert files, group
        known = set().union(*(actions(subs[c]) for c in commands))
        for f in files:
            doc = load_config(f)
            assert doc and set(k.replace("-", "_") for k in doc) <= known, f
        default = PACKAGED / group / "default.yaml"
        if default.is_file():
            cmd = subs[group]
            for k, v in load_config(default).items():
                d = cmd.get_default(k)
                if isinstance(v, list):
                    v = ",".join(map(str, v))
                assert d == v, (default, k, d, v)


def test_groups_ship_in_the_package():
    assert Path(PACKAGED).parent.name == "empas"
    assert (PACKAGED / "search" / "fast.yaml").is_file()


def test_the_search_runs_with_overrides(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["search", "example:tinyllama", "-o", str(out), "search=fast", "generations=3"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["config"]["generations"] == 3
    assert doc["config"]["pop_size"] == load_config(PACKAGED / "search" / "fast.yaml")["pop_size"]
    assert len(doc["history"]) == 3 + 1  # the first population, then each generation
