"""Running the gateway: the start-up line, a taken port, and `make install` / `make run`
(a runtime-only venv that serves on the PORT given to make)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import PRO_KEY, base_config
from fakes import Reply, fixture_bytes
from processes import Served, free_port, launch, write_config

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hi"}]


async def _finished(served: Served, timeout: float = 20) -> str:
    await asyncio.wait_for(served.proc.wait(), timeout)
    return served.output()


async def test_the_start_up_line_counts_what_is_usable(fake_server: Any, tmp_path: Path) -> None:
    """bob's key variable is unset: his key is disabled, and the line says 1 usable key."""
    _, url = await fake_server()
    doc = base_config({"oai": ("openai", url), "other": ("openai", url)}, str(tmp_path / "usage.db"))
    doc["keys"][1]["key"] = "${BOB_KEY_NOT_SET}"
    served = await launch(tmp_path, write_config(tmp_path, doc))
    try:
        out = await served.wait_for_output("listening on")
    finally:
        await served.stop()
    line = next(x for x in out.splitlines() if "listening on" in x)
    assert line.endswith(f"INFO gateway: gateway 0.1.0 listening on {served.url}/v1 "
                         "(2 providers, 4 models, 2 tiers, 1 usable key)"), line  # fmt: skip
    assert "BOB_KEY_NOT_SET is not set; key 'bob' is disabled" in out
    assert "every request will answer 401" not in out


async def test_no_usable_key_is_a_warning_at_start(fake_server: Any, tmp_path: Path) -> None:
    _, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"))
    for key in doc["keys"]:
        key["key"] = "${NO_SUCH_VARIABLE_4711}"
    served = await launch(tmp_path, write_config(tmp_path, doc))
    try:
        out = await served.wait_for_output("listening on")
    finally:
        await served.stop()
    # said once, by the configuration's warnings or by `serve` itself
    warning = [x for x in out.splitlines() if "every request will answer 401" in x]
    assert len(warning) == 1 and " WARNING gateway: " in warning[0] and "no usable key" in warning[0], out
    assert "(1 provider, 2 models, 2 tiers, 0 usable keys)" in out


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_taken_port_is_one_error_line(fake_server: Any, tmp_path: Path, workers: int) -> None:
    """Another program on the port: one ERROR line saying so and what to do, exit 1,
    no traceback (with workers: reported once, by the supervisor)."""
    _, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"), server={"workers": workers})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        served = await launch(tmp_path, write_config(tmp_path, doc), port=port, ready=False)
        out = await _finished(served)
    assert served.proc.returncode == 1
    errors = [x for x in out.splitlines() if " ERROR " in x]
    assert len(errors) == 1, out
    assert errors[0].endswith(
        f"cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process holds this port: choose another with --port)"
    )
    assert "Traceback" not in out
    assert ("listening on" in out) is False  # never claims a port it does not hold


async def test_make_install_is_runtime_only_and_make_run_serves_on_port(fake_server: Any, tmp_path: Path) -> None:
    """`make install` into a fresh venv: the runtime dependencies and nothing of the dev
    extras; `make run PORT=...` then serves from that venv on that port."""
    venv = tmp_path / "venv"
    make = ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}"]
    installed = await asyncio.to_thread(subprocess.run, [*make, "install"], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listing = subprocess.run([venv / "bin" / "python", "-m", "pip", "list", "--format=json"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    assert {"aiohttp", "pyyaml", "orjson", "aiosqlite", "prometheus-client", "gateway"} <= names
    dev_only = {"pytest", "ruff", "hypothesis", "openai", "anthropic", "jsonschema", "shiv", "pytest-aiohttp"}
    assert names & dev_only == set(), "dev tools in the serving venv"
    assert (venv / ".installed").exists() and not (venv / ".installed-dev").exists()

    fake, url = await fake_server()
    fake.script(Reply(body=fixture_bytes("openai_chat_completion_text.json")))
    config = write_config(tmp_path, base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db")))
    port, log = free_port(), tmp_path / "run.log"
    env = {**os.environ, "PRO_KEY": PRO_KEY, "FREE_KEY": "sk-free-x", "UPSTREAM_KEY": "sk-up-x"}
    with log.open("wb") as out:
        # its own process group: make and the gateway it starts are stopped together
        run = await asyncio.create_subprocess_exec(
            *make, "run", f"CONFIG={config}", f"PORT={port}",
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    served = Served(run, port, config, log)
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=PRO_KEY, max_retries=0)
    try:
        text = await served.wait_for_output(f"listening on http://127.0.0.1:{port}/v1", timeout=30)
        assert f"{venv}/bin/python -m gateway serve --config {config} --port {port}" in text  # make's echo
        answer = await client.chat.completions.create(model="oai-small", messages=MESSAGES)
        assert answer.choices[0].message.content
        os.killpg(run.pid, signal.SIGTERM)
        await asyncio.wait_for(run.wait(), 30)
    finally:
        await client.close()
        if run.returncode is None:
            os.killpg(run.pid, signal.SIGKILL)
            await run.wait()
    assert "stopped in" in log.read_text()


def test_make_targets_use_the_right_install() -> None:
    """What each target installs, by make's dry run: the serving targets the runtime,
    the tool targets the dev extras."""

    def recipe(target: str, *extra: str) -> str:
        # -B: as if nothing were installed yet, so every install step shows
        done = subprocess.run(["make", "-C", str(ROOT), "-n", "-B", "VENV=/nonexistent/venv", target, *extra],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    run = recipe("run", "PORT=9123")
    assert "pip install --quiet -e .\n" in run and "[dev]" not in run
    assert "-m gateway serve --config config/gateway.yaml --port 9123" in run
    assert "--port" not in recipe("run")  # without PORT the configuration's port stands
    for target in ("test", "lint", "demo", "dist"):
        assert "pip install --quiet -e '.[dev]'" in recipe(target), target
    assert "scripts/demo.py --port 9124" in recipe("demo", "PORT=9124")
