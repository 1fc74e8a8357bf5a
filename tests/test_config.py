"""Configuration: strict validation with exact places, env expansion, the example files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as cli_main
from gateway.config import ConfigError, hash_key, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent

VALID: dict[str, Any] = {
    "providers": {
        "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"},
        "claude": {"kind": "anthropic", "base_url": "https://api.anthropic.com", "api_key": "${ANTHROPIC_KEY}"},
    },
    "models": [
        {"id": "gpt-4o", "provider": "openai"},
        {"id": "gpt-4o-mini", "provider": "openai"},
        {"id": "claude-3-5-sonnet", "provider": "claude", "upstream": "claude-3-5-sonnet-20241022"},
    ],
    "tiers": {
        "free": {"models": ["gpt-4o-mini"]},
        "pro": {"extends": "free", "models": ["gpt-4o", "claude-3-5-sonnet"]},
    },
    "keys": [
        {"name": "alice", "key": "${ALICE_KEY}", "tier": "pro"},
        {"name": "bob", "key_sha256": hash_key("bob-secret"), "tier": "free"},
    ],
}
ENV = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_KEY": "sk-a", "ALICE_KEY": "alice-secret"}


def errors_of(doc: Any, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, env)
    return exc.value.errors


def edited(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    doc.update(changes)
    return doc


def test_valid_config_resolves_tiers_and_keys() -> None:
    config = parse_config(VALID, ENV)
    assert config.tiers["pro"].models == {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"}
    assert config.tiers["free"].models == {"gpt-4o-mini"}
    assert config.models["claude-3-5-sonnet"].upstream == "claude-3-5-sonnet-20241022"
    assert config.models["gpt-4o"].upstream == "gpt-4o"
    assert config.providers["openai"].api_key == "sk-o"
    assert {k.name for k in config.keys.values()} == {"alice", "bob"}
    assert config.keys[hash_key("alice-secret")].tier == "pro"
    assert config.keys[hash_key("bob-secret")].name == "bob"
    assert config.warnings == ()


def test_env_default_and_unset_provider_key() -> None:
    doc = edited()
    doc["providers"]["openai"]["base_url"] = "${OAI_URL:-http://127.0.0.1:9/v1}"
    env = {k: v for k, v in ENV.items() if k != "ANTHROPIC_KEY"}
    config = parse_config(doc, env)
    assert config.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert config.providers["claude"].api_key is None
    assert config.providers["claude"].api_key_env == "ANTHROPIC_KEY"
    assert any("ANTHROPIC_KEY" in w for w in config.warnings)


def test_unset_client_key_disables_that_key_with_a_warning() -> None:
    env = {k: v for k, v in ENV.items() if k != "ALICE_KEY"}
    config = parse_config(VALID, env)
    assert {k.name for k in config.keys.values()} == {"bob"}
    assert any("ALICE_KEY" in w and "alice" in w for w in config.warnings)


def test_workers_with_limits_warn_that_limits_are_per_worker() -> None:
    assert parse_config(edited(server={"workers": 4}), ENV).workers == 4
    assert parse_config(edited(server={"workers": 4}), ENV).warnings == ()
    doc = edited(server={"workers": 4})
    doc["tiers"]["free"]["limits"] = {"rpm": 60}
    config = parse_config(doc, ENV)
    assert any("per worker process" in w and "4 times" in w for w in config.warnings), config.warnings


def test_server_connection_settings_defaults_and_values() -> None:
    config = parse_config(VALID, ENV)
    assert (config.header_timeout, config.body_timeout, config.keepalive_timeout) == (10.0, 60.0, 75.0)
    assert config.max_connections is None  # the server derives it from the open-file limit
    assert config.max_upstream_body_bytes == 64 * 1024 * 1024
    server = {"header_timeout": 2.5, "body_timeout": 5, "keepalive_timeout": 30, "max_connections": 500,
              "max_upstream_body_bytes": 1024}  # fmt: skip
    config = parse_config(edited(server=server), ENV)
    assert (config.header_timeout, config.body_timeout, config.keepalive_timeout) == (2.5, 5, 30)
    assert (config.max_connections, config.max_upstream_body_bytes) == (500, 1024)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["tiers"]["pro"]["models"].append("gpt-5"), "tiers.pro.models[2]: unknown model 'gpt-5'"),
        (
            lambda d: d["keys"].append({"name": "c", "key": "x", "tier": "gold"}),
            "keys[2].tier: tier 'gold' is not defined",
        ),
        (
            lambda d: d["models"].append({"id": "gpt-4o", "provider": "openai"}),
            "models[3].id: duplicate model id 'gpt-4o' (first at models[0])",
        ),
        (
            lambda d: d["keys"].append({"name": "c", "key": "alice-secret", "tier": "free"}),
            "keys[2]: duplicate key: same secret as keys[0]",
        ),
        (lambda d: d["providers"]["openai"].update(kind="azure"), "providers.openai.kind: unknown kind 'azure'"),
        (lambda d: d["tiers"]["free"].update(extends="pro"), "cycle: free -> pro -> free"),
        (lambda d: d["models"][0].update(provider="nope"), "models[0].provider: unknown provider 'nope'"),
        (lambda d: d["models"][0].update(colour="red"), "models[0].colour: unknown field"),
        (lambda d: d["providers"]["openai"].pop("base_url"), "providers.openai.base_url: required"),
        (lambda d: d["providers"]["openai"].update(base_url="ftp://x"), "must start with http:// or https://"),
        (lambda d: d["keys"][1].update(key_sha256="abc"), "keys[1].key_sha256: must be 64 hexadecimal characters"),
        (lambda d: d["keys"][1].update(key="both"), "keys[1]: give exactly one of 'key' or 'key_sha256'"),
        (lambda d: d["tiers"]["pro"].update(extends="platinum"), "tiers.pro.extends: tier 'platinum' is not defined"),
        (lambda d: d.update(server={"port": "eighty"}), "server.port: must be a positive integer"),
        (lambda d: d.update(server={"workers": 0}), "server.workers: must be a positive integer, got 0"),
        (lambda d: d.update(server={"header_timeout": 0}), "server.header_timeout: must be a positive number, got 0"),
        (lambda d: d.update(server={"body_timeout": "soon"}), "server.body_timeout: must be a positive number"),
        (lambda d: d.update(server={"keepalive_timeout": -1}), "server.keepalive_timeout: must be a positive number"),
        (lambda d: d.update(server={"max_connections": 1.5}), "server.max_connections: must be a positive integer"),
        (
            lambda d: d.update(server={"max_upstream_body_bytes": 0}),
            "server.max_upstream_body_bytes: must be a positive integer, got 0",
        ),
        (lambda d: d.update(server={"max_conections": 9}), "server.max_conections: unknown field"),
        (lambda d: d["providers"]["openai"].update(timeouts={"read": -1}), "providers.openai.timeouts.read"),
        (lambda d: d.update(extra=1), "extra: unknown field"),
    ],
)
def test_each_problem_is_named_with_its_place(mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(VALID)
    mutate(doc)
    errors = errors_of(doc)
    assert any(expected in e for e in errors), errors


def test_all_errors_reported_at_once() -> None:
    doc = copy.deepcopy(VALID)
    doc["tiers"]["pro"]["models"].append("gpt-5")
    doc["keys"][0]["tier"] = "gold"
    assert len(errors_of(doc)) == 2


def test_empty_and_non_mapping_documents() -> None:
    assert any("empty" in e for e in errors_of(None))
    assert any("must be a mapping" in e for e in errors_of(["a"]))


def test_shipped_configs_are_valid() -> None:
    for name in ("gateway.yaml", "demo.yaml"):
        config = load_config(ROOT / "config" / name, environ={"ALICE_KEY": "a", "OPENAI_API_KEY": "k"})
        assert config.models, name
    example = load_config(ROOT / "config" / "gateway.yaml", environ={})
    ids = set(example.models)
    for seed in ("gpt-4o", "gpt-4o-mini", "o1", "o3-mini", "claude-3-5-sonnet-20241022", "claude-3-haiku-20240307",
                 "gemini-1.5-pro", "gemini-2.0-flash"):  # fmt: skip
        assert seed in ids


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  openai: {kind: openai\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "line" in exc.value.errors[0] and "invalid YAML" in exc.value.errors[0]


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "config" / "demo.yaml"
    assert cli_main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {x: {kind: nope, base_url: 'http://h'}}\nmodels: []\ntiers: {}\n")
    assert cli_main(["check-config", "--config", str(bad)]) == 2
    assert "providers.x.kind: unknown kind 'nope'" in capsys.readouterr().err
