"""`make dist`: the single executable file, built for real (shiv, wheels from the
package registry) and run the way deploy/gateway.service runs it: its ExecStart, its
Environment and EnvironmentFile, ExecReload's SIGHUP and KillSignal's SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import FREE_KEY, PRO_KEY, UPSTREAM_KEY, base_config
from deploy_files import DEPLOY, parse_unit, unit_command, unit_value
from fakes import Reply, fixture_bytes
from processes import free_port

from gateway import __version__

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "dist" / "gateway"
SOURCES = [ROOT / "setup.cfg", ROOT / "pyproject.toml", ROOT / "README.md", *(ROOT / "gateway").rglob("*.py")]
# what the dev extras bring and a serving artefact must not carry
DEV_ONLY = ("pytest", "_pytest", "ruff", "hypothesis", "openai", "anthropic", "jsonschema", "shiv", "redis", "asyncpg")


@pytest.fixture(scope="session")
def dist_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/gateway when `make dist` made it after the last change to the sources; else
    built here once for the session (about 10 s with pip's cache warm)."""
    if BUILT.exists() and BUILT.stat().st_mtime > max(p.stat().st_mtime for p in SOURCES if p.exists()):
        return BUILT
    output = tmp_path_factory.mktemp("dist") / "gateway"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_dist.py"), str(output)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return output


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A bare environment: PATH (to find the python the shebang names) and a HOME of
    its own, so nothing of this test's venv or user reaches the process."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home")}


def test_the_file_holds_the_runtime_and_nothing_else(dist_file: Path) -> None:
    head = dist_file.read_bytes()[:64]
    assert head.startswith(f"#!/usr/bin/env python{sys.version_info.major}.{sys.version_info.minor}\n".encode())
    assert os.access(dist_file, os.X_OK)
    with zipfile.ZipFile(dist_file) as zf:
        tops = {name.split("/")[1] for name in zf.namelist() if name.startswith("site-packages/") and "/" in name[14:]}
    for needed in ("gateway", "aiohttp", "orjson", "yaml", "aiosqlite", "prometheus_client", "uvloop"):
        assert needed in tops, f"{needed} is missing from the file"
    assert not [t for t in tops if t.split("-")[0].lower() in DEV_ONLY], sorted(tops)


def test_version_and_check_config(dist_file: Path, home: dict[str, str], tmp_path: Path) -> None:
    env = {**home, "SHIV_ROOT": str(tmp_path / "shiv"), **dict(_keys())}
    version = subprocess.run([dist_file, "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"gateway {__version__}", version
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base_config({"oai": ("openai", "http://127.0.0.1:9/v1")}, str(tmp_path / "u.db"))))
    ok = subprocess.run([dist_file, "check-config", "--config", good], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith(f"{good}: OK ("), ok
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {pro: {models: [nope]}}\n")
    refused = subprocess.run([dist_file, "check-config", "--config", bad], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "invalid configuration" in refused.stderr


def _keys() -> list[tuple[str, str]]:
    return [("UPSTREAM_KEY", UPSTREAM_KEY), ("PRO_KEY", PRO_KEY), ("FREE_KEY", FREE_KEY)]


async def test_the_file_serves_as_the_systemd_unit_starts_it(
    dist_file: Path, home: dict[str, str], tmp_path: Path, fake_server: Any
) -> None:
    fake, url = await fake_server()
    unit = parse_unit(DEPLOY / "gateway.service")
    state = tmp_path / "state"  # stands for /var/lib/gateway (StateDirectory=gateway)
    state.mkdir()
    port = free_port()
    config = tmp_path / "gateway.yaml"  # stands for /etc/gateway/gateway.yaml
    doc = base_config({"oai": ("openai", url)}, str(state / "gateway.db"), server={"port": port})
    config.write_text(yaml.safe_dump(doc))
    env_file = tmp_path / "env"  # /etc/gateway/env: the secrets, VAR=value lines
    env_file.write_text("".join(f"{k}={v}\n" for k, v in _keys()))

    argv = unit_command(unit)
    assert argv[:2] == ["/opt/gateway/gateway", "serve"] and "/etc/gateway/gateway.yaml" in argv
    swap = {"/opt/gateway/gateway": str(dist_file), "/etc/gateway/gateway.yaml": str(config)}
    argv = [swap.get(a, a) for a in argv]
    env = dict(home)
    for assignment in unit["Service"].get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value.replace("/var/lib/gateway", str(state))
    assert unit_value(unit, "Service", "EnvironmentFile") == "/etc/gateway/env"
    env.update(line.split("=", 1) for line in env_file.read_text().splitlines())  # type: ignore[misc]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=state, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=PRO_KEY, max_retries=0)
    try:
        await _wait_for(log, f"listening on http://127.0.0.1:{port}/v1 (1 provider, 2 models, 2 tiers, 2 usable keys)")
        # it runs from the unpacked file: every extension module it loaded came from SHIV_ROOT
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        loaded = {line.split()[-1] for line in maps.splitlines() if "site-packages" in line}
        assert loaded and all(p.startswith(env["SHIV_ROOT"]) for p in loaded), sorted(loaded)[:5]
        assert any("orjson" in p for p in loaded)

        fake.script(Reply(body=fixture_bytes("openai_chat_completion_text.json")))
        answer = await client.chat.completions.create(model="oai-small", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content and fake.last.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        fake.script(Reply(body=fixture_bytes("openai_chunks_text_usage.sse"), content_type="text/event-stream"))
        stream = await client.chat.completions.create(
            model="oai-small", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c async for c in stream][-1].choices[0].finish_reason == "stop"

        # ExecReload: SIGHUP re-reads the YAML
        reload = unit_command(unit, "ExecReload")
        assert reload == ["/bin/kill", "-HUP", "$MAINPID"]
        config.write_text(config.read_text().replace("oai-large", "oai-huge"))
        proc.send_signal(signal.SIGHUP)
        await _wait_for(log, "configuration reloaded")
        assert [m.id for m in (await client.models.list()).data] == ["oai-small", "oai-huge"]

        # KillSignal: a graceful stop, well within TimeoutStopSec
        assert unit_value(unit, "Service", "KillSignal") == "SIGTERM"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert time.monotonic() - started < float(unit_value(unit, "Service", "TimeoutStopSec").rstrip("s"))
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (state / "gateway.db").exists()  # the usage log where ReadWritePaths lets it write
    for secret in (UPSTREAM_KEY, PRO_KEY, FREE_KEY):
        assert secret not in log.read_text()


async def _wait_for(log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in:\n{log.read_text(errors='replace')}"
        await asyncio.sleep(0.05)
