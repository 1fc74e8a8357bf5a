"""`gateway check-config` catches what `serve` would trip on (issue 15): ports, duplicate
YAML keys, the database path, errors with line and column and a "did you mean", one
report per mistake, and warnings for a gateway that would answer nothing.

Every test writes a real file under tmp_path and runs the command's own function (one
runs it as a subprocess) or `load_config`, as `serve` does."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main as cli_main
from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

# Line numbers matter below: gpt-5 is at line 12, column 9.
BASE = """\
server: {host: 127.0.0.1, port: 8080}
database: DB
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: sk-upstream}
models:
  - {id: gpt-4o, provider: openai}
  - {id: gpt-4o-mini, provider: openai}
tiers:
  demo:
    models:
      - gpt-4o-mini
      - gpt-4o
keys:
  - {name: demo, key: sk-demo, tier: demo}
"""


def write(tmp_path: Path, text: str, *, db: Path | str | None = None) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("DB", str(db if db is not None else tmp_path / "usage.db")))
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def problems(err: str) -> list[str]:
    """The indented problem lines under "<file>: invalid configuration:"."""
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


def warnings(err: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]


def test_the_base_file_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(write(tmp_path, BASE), capsys)
    assert (code, err) == (0, ""), err
    assert out.endswith("OK (1 provider, 2 models, 1 tier, 1 key)\n"), out


# -- 1. ports --------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [70000, 65536])
def test_a_port_outside_1_to_65535_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], port: int) -> None:
    code, _, err = check(write(tmp_path, BASE.replace("port: 8080", f"port: {port}")), capsys)
    assert code == 2
    assert problems(err) == [f"line 1, column 33: server.port: must be a port number from 1 to 65535, got {port}"]
    for fine in (65535, 1):
        assert check(write(tmp_path, BASE.replace("port: 8080", f"port: {fine}")), capsys)[0] == 0


# -- 2. duplicate keys -----------------------------------------------------------------------


def test_a_duplicate_key_is_an_error_with_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("port: 8080}", "port: 8080, host: 0.0.0.0}") + "database: elsewhere.db\n"
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert problems(err) == [
        "line 1, column 39: server.host: duplicate key (first at line 1, column 10)",
        "line 15, column 1: database: duplicate key (first at line 2, column 1)",
    ]


def test_a_merge_key_override_is_not_a_duplicate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("server: {host: 127.0.0.1, port: 8080}", "base: &base {host: 127.0.0.1, port: 8080}")
    text = "x-" + text.replace("database:", "server: {<<: *base, port: 9090}\ndatabase:")
    code, _, err = check(write(tmp_path, text), capsys)
    # the only problem is the anchor's own field, which is not a setting
    assert [p.split(" (allowed")[0] for p in problems(err)] == ["line 1, column 1: x-base: unknown field"], err
    assert code == 2


def test_check_config_as_a_process_names_the_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("port: 8080}", "port: 8080, host: 0.0.0.0}"))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr == (
        f"{path}: invalid configuration:\n"
        "  line 1, column 39: server.host: duplicate key (first at line 1, column 10)\n"
    )


# -- 3. the database path --------------------------------------------------------------------


def test_a_directory_as_database_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "usage.db").mkdir()
    code, _, err = check(write(tmp_path, BASE), capsys)
    assert code == 2
    db = tmp_path / "usage.db"
    assert problems(err) == [f"line 2, column 11: database: {db} is a directory, not an SQLite database file"]


def test_a_file_that_is_not_sqlite_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "usage.db").write_text("name,tokens\nalice,12\n")
    code, _, err = check(write(tmp_path, BASE), capsys)
    assert code == 2
    db = tmp_path / "usage.db"
    assert problems(err) == [f"line 2, column 11: database: {db} exists and is not an SQLite database"]
    # an empty file (SQLite fills it) and a real database are fine
    (tmp_path / "empty.db").touch()
    assert check(write(tmp_path, BASE, db=tmp_path / "empty.db"), capsys)[0] == 0
    sqlite3.connect(tmp_path / "real.db").execute("CREATE TABLE t (x)").connection.close()
    assert check(write(tmp_path, BASE, db=tmp_path / "real.db"), capsys)[0] == 0


def test_the_database_folder_is_created_one_level_deep_at_most(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check(write(tmp_path, BASE, db=tmp_path / "data" / "usage.db"), capsys)
    assert code == 0, err
    assert warnings(err) == [
        f"line 2, column 11: database: the folder {tmp_path / 'data'} does not exist; "
        "the gateway creates it at first start"
    ]
    assert not (tmp_path / "data").exists()  # checking changes nothing
    code, _, err = check(write(tmp_path, BASE, db=tmp_path / "typo" / "data" / "usage.db"), capsys)
    assert code == 2
    assert problems(err) == [
        f"line 2, column 11: database: the folder {tmp_path / 'typo'} does not exist "
        "(only the database's own folder is created)"
    ]


def test_serve_loading_the_config_refuses_a_missing_grandparent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASE, db=tmp_path / "typo" / "data" / "usage.db"))
    assert "typo" in caught.value.errors[0]


def test_a_relative_database_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(write(folder, BASE, db="usage.db"))
    assert config.database == str(folder / "usage.db")
    (folder / "usage.db").write_text("not a database")
    assert check(folder / "gateway.yaml", capsys)[0] == 2  # the file next to the config is the one checked
    # a PostgreSQL URL is not a path: neither resolved nor looked for on disk
    url = "postgresql://gw@127.0.0.1:5432/nowhere/deeper"
    assert load_config(write(folder, BASE, db=url)).database == url
    assert check(folder / "gateway.yaml", capsys)[0] == 0


# -- 4. line and column, "did you mean" --------------------------------------------------------


def test_errors_give_line_column_and_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("- gpt-4o\n", "- gpt-5\n").replace("tier: demo}", "tier: dem}")
    text = text.replace("{id: gpt-4o, provider: openai}", "{id: gpt-4o, provider: opnai, colour: red}")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert problems(err) == [  # in file order
        "line 6, column 28: models[0].provider: unknown provider 'opnai'; did you mean 'openai'?",
        "line 6, column 35: models[0].colour: unknown field (allowed: id, provider, upstream, owned_by, created, "
        "max_tokens, deployments)",
        "line 12, column 9: tiers.demo.models[1]: unknown model 'gpt-5'; did you mean 'gpt-4o'?",
        "line 14, column 38: keys[0].tier: tier 'dem' is not defined; did you mean 'demo'?",
    ]


def test_an_unknown_field_suggests_the_close_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("port: 8080}", "prot: 8080}")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert problems(err) == ["line 1, column 27: server.prot: unknown field; did you mean 'port'?"]


def test_a_missing_field_points_at_its_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace(', base_url: "https://api.openai.com/v1"', "")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert problems(err) == ["line 4, column 3: providers.openai.base_url: required"]


# -- 5. one mistake, one report ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("models:\n  - {id", "modles:\n  - {id", "line 5, column 1: modles: unknown field; did you mean 'models'?"),
        (
            "    models:\n",
            "    modles:\n",
            "line 10, column 5: tiers.demo.modles: unknown field; did you mean 'models'?",
        ),  # noqa: E501
        ("{id: gpt-4o,", "{idd: gpt-4o,", "line 6, column 6: models[0].idd: unknown field; did you mean 'id'?"),
        ("tier: demo}", "teir: demo}", "line 14, column 32: keys[0].teir: unknown field; did you mean 'tier'?"),
        ("providers:\n", "provider:\n", "line 3, column 1: provider: unknown field; did you mean 'providers'?"),
        ("tiers:\n", "teirs:\n", "line 8, column 1: teirs: unknown field; did you mean 'tiers'?"),
    ],
)
def test_a_typo_is_one_error_not_a_cascade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: str, after: str, expected: str
) -> None:
    assert before in BASE
    code, _, err = check(write(tmp_path, BASE.replace(before, after, 1)), capsys)
    assert code == 2
    assert problems(err) == [expected]


def test_an_extends_cycle_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("  demo:\n", "  base: {extends: demo}\n  demo:\n    extends: base\n")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert problems(err) == ["line 9, column 19: tiers.base.extends: cycle: base -> demo -> base"]


def test_a_yaml_syntax_error_names_the_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE.replace("openai: {kind: openai,", "openai: {kind: openai"))
    code, _, err = check(path, capsys)
    assert code == 2
    assert err.count(str(path)) == 1, err
    assert problems(err) == ["line 4, column 33: invalid YAML: expected ',' or '}', but got ':'"]


def test_a_missing_file_is_named_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(tmp_path / "nowhere.yaml", capsys)
    assert code == 2
    assert err.count("nowhere.yaml") == 1, err


# -- 6. a gateway that would answer nothing, or not what was meant -----------------------------


def test_zero_usable_keys_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("key: sk-demo", 'key: "${DEMO_KEY}"')
    code, out, err = check(write(tmp_path, text), capsys)
    assert code == 0
    assert out.endswith("OK (1 provider, 2 models, 1 tier, 0 keys)\n"), out
    assert warnings(err) == [
        "line 14, column 23: keys[0].key: environment variable DEMO_KEY is not set; key 'demo' is disabled",
        "line 14, column 3: keys: no usable key; every request will answer 401",
    ]
    code, out, err = check(write(tmp_path, text.replace("  - {name: demo", "  # - {name: demo")), capsys)
    assert warnings(err) == ["keys: none configured; every request will answer 401"]


@pytest.mark.parametrize("value", ["$DEMO_KEY", "$demo_key"])
def test_a_variable_without_braces_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    text = BASE.replace("key: sk-demo", f'key: "{value}"')
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 0
    name = value[1:]
    assert warnings(err) == [
        f"line 14, column 23: keys[0].key: {value} is taken literally; write ${{{name}}} to read the variable {name}"
    ]


def test_a_variable_without_braces_inside_a_value_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace("api_key: sk-upstream}", "api_key: sk-upstream, headers: {X-Team: Bearer $TEAM}}")
    text = text.replace("https://api.openai.com/v1", "http://$HOST:8000/v1")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 0
    assert [w.split(": ", 2)[1:] for w in warnings(err)] == [
        ["providers.openai.base_url", "$HOST is taken literally; write ${HOST} to read the variable HOST"],
        ["providers.openai.headers.X-Team", "$TEAM is taken literally; write ${TEAM} to read the variable TEAM"],
    ]
    # a secret with a dollar inside is just a secret
    code, _, err = check(write(tmp_path, BASE.replace("key: sk-demo", 'key: "sk-ab$CD12"')), capsys)
    assert (code, err) == (0, "")


VERSIONED = ("https://api.openai.com/v1", "https://api.groq.com/openai/v1", "https://openrouter.ai/api/v1",
             "https://generativelanguage.googleapis.com/v1beta/openai", "http://127.0.0.1:11434/v1",
             "https://open.bigmodel.cn/api/paas/v4")  # fmt: skip


@pytest.mark.parametrize("url", ["https://api.openai.com", "https://api.openai.com/", "https://example.com/openai"])
def test_an_openai_base_url_without_a_version_segment_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, _, err = check(write(tmp_path, BASE.replace("https://api.openai.com/v1", url)), capsys)
    assert code == 0
    assert warnings(err) == [
        "line 4, column 36: providers.openai.base_url: no version segment such as /v1; requests would go to "
        f"{url.rstrip('/')}/chat/completions (OpenAI-compatible servers serve /v1/chat/completions)"
    ]
    for good in VERSIONED:
        assert check(write(tmp_path, BASE.replace("https://api.openai.com/v1", good)), capsys)[::2] == (0, ""), good
    # the other kinds take the host alone
    text = BASE.replace('kind: openai, base_url: "https://api.openai.com/v1"', "kind: anthropic, base_url: https://h")
    assert check(write(tmp_path, text), capsys)[::2] == (0, "")


def test_the_ok_line_counts_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(ROOT / "config" / "demo.yaml", capsys)
    assert code == 0
    assert out.endswith("OK (3 providers, 3 models, 1 tier, 1 key)\n"), out


def test_workers_and_limits_warn_only_without_shared_state() -> None:
    from conftest import ENV, base_config

    from gateway.config import parse_config

    doc = base_config({"oai": ("openai", "http://127.0.0.1:9/v1")}, "/tmp/unused.db", server={"workers": 2})
    doc["tiers"]["free"]["limits"] = {"rpm": 10}
    alone = parse_config(doc, ENV)
    assert any("counted per worker process" in w for w in alone.warnings)
    shared = parse_config({**doc, "state": {"redis": "redis://127.0.0.1:6379/0"}}, ENV)
    assert not any("counted per worker process" in w for w in shared.warnings)  # Redis counts for all of them


def test_the_usage_spill_dir_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    url = "postgresql://gw@127.0.0.1:5432/db"
    assert load_config(write(folder, BASE, db=url)).usage_spill_dir == str(folder / "data")  # the default
    config = load_config(write(folder, BASE + "usage_spill_dir: spill\n", db=url))
    assert config.usage_spill_dir == str(folder / "spill")
    config = load_config(write(folder, BASE + f"usage_spill_dir: {tmp_path / 'abs'}\n", db=url))
    assert config.usage_spill_dir == str(tmp_path / "abs")
