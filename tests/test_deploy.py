"""deploy/: the systemd unit (its keys, `systemd-analyze verify` and its offline
security score), the nginx example (`nginx -t`, then a real TLS stream through it that
must arrive event by event) and the Dockerfile (its instructions, and its HEALTHCHECK
command run against a real gateway).  A real `docker build` cannot run here (no
daemon, no image registry); the file's single-file sibling, dist/gateway, is run as
the unit runs it in tests/test_dist.py."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ENV, PRO_KEY, base_config
from deploy_files import DEPLOY, parse_dockerfile, parse_unit, unit_command, unit_value
from processes import free_port

from gateway.config import parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from build_dist import SOURCES  # noqa: E402
from mock_providers import make_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UNIT = DEPLOY / "gateway.service"


def _defaults() -> Any:
    """The server.* defaults the deploy files must agree with (a config that sets none)."""
    doc = base_config({"oai": ("openai", "http://127.0.0.1:9/v1")}, "usage.db")
    return parse_config(doc, ENV, created=1_700_000_000)


# -- systemd ---------------------------------------------------------------------------


def test_the_unit_has_what_a_deployment_needs() -> None:
    unit = parse_unit(UNIT)
    service = unit["Service"]
    assert unit_value(unit, "Service", "User") == "gateway" != "root"
    argv = unit_command(unit)
    assert argv[0] == "/opt/gateway/gateway" and argv[1:] == ["serve", "--config", "/etc/gateway/gateway.yaml"]
    assert unit_command(unit, "ExecReload") == ["/bin/kill", "-HUP", "$MAINPID"]
    assert unit_value(unit, "Service", "KillSignal") == "SIGTERM"
    # the graceful stop takes up to shutdown_timeout plus about a second: systemd must wait longer
    assert float(unit_value(unit, "Service", "TimeoutStopSec")) >= _defaults().shutdown_timeout + 5
    assert unit_value(unit, "Service", "EnvironmentFile") == "/etc/gateway/env"
    assert unit_value(unit, "Service", "NoNewPrivileges") == "true"
    assert unit_value(unit, "Service", "ProtectSystem") == "strict"
    # the database the header tells to configure lies in a writable path
    header = UNIT.read_text()
    database = re.search(r"database: (\S+)", header)
    assert database is not None
    writable = [p for v in service["ReadWritePaths"] for p in v.split()]
    assert any(database.group(1).startswith(p.lstrip("-") + "/") for p in writable), writable
    assert "SHIV_ROOT=/var/lib/gateway/shiv" in service["Environment"]  # the single file unpacks where it may write
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"


_SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(_SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')")
def test_systemd_analyze_verify_finds_nothing_but_the_missing_binary(tmp_path: Path) -> None:
    """Every key known and every value parsed; the only complaint allowed is that
    /opt/gateway/gateway is not installed on this machine."""
    done = subprocess.run([_SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, cwd=tmp_path)  # type: ignore[list-item]
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    allowed = re.compile(r"^gateway\.service: Command /opt/gateway/gateway is not executable")
    assert [x for x in lines if not allowed.search(x)] == [], lines


@pytest.mark.skipif(_SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')")
def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """systemd's own exposure score (0 = locked down, 10 = nothing): 9.2 for a bare unit with a User=."""
    done = subprocess.run([_SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],  # type: ignore[list-item]
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    found = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


# system calls the gateway makes that a careless filter would take away: setrlimit and
# prlimit64 (server.py raises the open-file limit), prctl (workers.py), clone (fork for
# workers), the socket calls, epoll (asyncio, uvloop) and io_uring (libuv's file I/O)
_NEEDED = ("setrlimit", "prlimit64", "prctl", "clone", "socket", "setsockopt", "bind", "listen", "accept4",
           "epoll_wait", "epoll_ctl", "io_uring_setup", "getrandom", "fsync", "pwrite64")  # fmt: skip


def _expand(spec: str, seen: dict[str, set[str]]) -> set[str]:
    """A SystemCallFilter= entry (a call or an @group) as the set of calls it names."""
    if not spec.startswith("@"):
        return {spec}
    if spec not in seen:
        seen[spec] = set()  # a group listing itself is no loop
        done = subprocess.run([_SYSTEMD_ANALYZE, "syscall-filter", spec],  # type: ignore[list-item]
                              capture_output=True, text=True, check=True)  # fmt: skip
        for line in done.stdout.splitlines()[1:]:
            name = line.strip()
            if name and not name.startswith("#"):
                seen[spec] |= _expand(name, seen)
    return seen[spec]


@pytest.mark.skipif(_SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')")
def test_the_system_call_filter_leaves_the_gateway_what_it_uses() -> None:
    seen: dict[str, set[str]] = {}
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in parse_unit(UNIT)["Service"]["SystemCallFilter"]:
        deny = value.startswith("~")
        for spec in value.lstrip("~").split():
            (denied if deny else allowed).update(_expand(spec, seen))
    assert len(allowed) > 100
    assert [call for call in _NEEDED if call not in allowed or call in denied] == []
    assert {"setuid", "chown", "setgroups"} <= denied  # what @privileged takes away


# -- nginx -----------------------------------------------------------------------------

_NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def _site_on_loopback(text: str, upstream: int, tls: int, plain: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with its addresses and certificate made local; every other
    line (the proxy settings under test) is left exactly as written."""
    swaps = [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{tls} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("listen 80;", f"listen 127.0.0.1:{plain};"),
        ("listen [::]:80;", ""),
        ("/etc/letsencrypt/live/gateway.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/gateway.example.com/privkey.pem", str(key)),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


def _nginx_conf(tmp: Path, site: str) -> Path:
    (tmp / "gateway.conf").write_text(site)
    conf = tmp / "nginx.conf"
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log notice;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temps}\n    include {tmp}/gateway.conf;\n}}\n"
    )
    return conf


def _certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_nginx_example_limits_bodies_as_the_gateway_does() -> None:
    text = (DEPLOY / "nginx.conf").read_text()
    size = re.search(r"^\s*client_max_body_size (\d+)m;", text, re.M)
    assert size and int(size.group(1)) * 1024 * 1024 == _defaults().max_body_bytes
    for line in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
        assert re.search(rf"^\s*{re.escape(line)}", text, re.M), line
    read = re.search(r"^\s*proxy_read_timeout (\d+)s;", text, re.M)
    assert read and int(read.group(1)) >= 600  # above the providers' longest timeouts


async def _stream_times(tls: int, cert: Path, model: str) -> list[float]:
    """Seconds at which each content event of one streamed completion arrived."""
    context = ssl.create_default_context(cafile=str(cert))
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(f"https://127.0.0.1:{tls}/v1/chat/completions", json=body, ssl=context,
                                headers={"Authorization": f"Bearer {PRO_KEY}"}) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            assert resp.version == aiohttp.HttpVersion11
            async for line in resp.content:
                if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                    times.append(time.monotonic() - started)
    return times


@pytest.mark.skipif(_NGINX is None, reason="nginx not installed (Debian package 'nginx-light' or 'nginx')")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (for a test certificate)")
async def test_nginx_example_passes_streams_on_as_they_come(
    aiohttp_server: Any, start_gateway: Any, tmp_path: Path
) -> None:
    """The example, made local: `nginx -t` accepts it, HTTP is redirected to HTTPS, and
    a stream's events (0.3 s apart upstream) reach a TLS client 0.3 s apart, not at the
    end."""
    stand_in = await aiohttp_server(make_app(chunks=5, delay=0.3), host="127.0.0.1")
    doc = base_config({"oai": ("openai", str(stand_in.make_url("/v1")))}, str(tmp_path / "usage.db"))
    gateway = await start_gateway(doc)
    cert, key = _certificate(tmp_path)
    original = (DEPLOY / "nginx.conf").read_text()

    async def run(site_text: str, name: str) -> tuple[list[float], int]:
        tmp = tmp_path / name
        tmp.mkdir()
        tls, plain = free_port(), free_port()
        site = _site_on_loopback(site_text, gateway.server.port, tls, plain, cert, key)
        conf = _nginx_conf(tmp, site)
        checked = subprocess.run([_NGINX, "-t", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "t.log")],  # type: ignore[list-item]
                                 capture_output=True, text=True)  # fmt: skip
        assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
        nginx = await asyncio.create_subprocess_exec(
            _NGINX, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "e.log"),  # type: ignore[arg-type]
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", tls)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{plain}/v1/models"
                async with session.get(url, allow_redirects=False) as resp:
                    redirect = resp.status
                    assert resp.headers["Location"].startswith("https://")
            return await _stream_times(tls, cert, "oai-small"), redirect
        finally:
            nginx.terminate()
            await nginx.wait()

    times, redirect = await run(original, "example")
    assert redirect == 301
    assert len(times) == 5
    assert times[-1] - times[0] >= 0.9, f"events arrived together: {times}"  # 4 gaps of 0.3 s upstream

    # The control: the gateway's own `X-Accel-Buffering: no` also unbuffers its streams, so
    # ignore that header and drop the example's `proxy_buffering off`: the events are held
    # to the end. The check can tell, and the example's line does the work by itself.
    control = original.replace("proxy_buffering off;", "proxy_ignore_headers X-Accel-Buffering;")
    held, _ = await run(control, "control")
    assert len(held) == 5 and held[-1] - held[0] < 0.2, f"the control did not buffer: {held}"


# -- Docker ----------------------------------------------------------------------------


def test_the_dockerfile_builds_a_runtime_only_non_root_image() -> None:
    steps = parse_dockerfile(DEPLOY / "Dockerfile")
    kinds = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    args = dict(reversed(steps))  # the first of each instruction
    last = {k: a for k, a in steps}  # the last of each
    # a non-root user, created in the image, in force for CMD
    assert last["USER"] not in ("root", "0") and "useradd" in args["RUN"] and last["USER"] in args["RUN"]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")  # installs ran as root, before
    assert "8080" in last["EXPOSE"].split()
    cmd = json.loads(last["CMD"])
    assert cmd == ["gateway", "serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
    assert re.search(r"^\s*gateway = gateway\.cli:main$", (ROOT / "setup.cfg").read_text(), re.M)  # the console script
    # what is copied exists, and is what the package needs to build (the dist build's list)
    copied: set[str] = set()
    for kind, arg in steps:
        if kind == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source)
    assert copied == set(SOURCES)
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert len(installs) == 1 and "[" not in installs[0] and " -e " not in installs[0]  # no extras, not editable
    assert "HEALTHCHECK" in kinds


def _healthcheck() -> list[str]:
    last = {k: a for k, a in parse_dockerfile(DEPLOY / "Dockerfile")}
    options, _, command = last["HEALTHCHECK"].partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)
    assert argv[0] == "python" and "http://127.0.0.1:8080/healthz" in argv[-1]
    return argv


@pytest.mark.parametrize("state", ["ok", "degraded", "down"])
async def test_the_healthcheck_command_tells_up_from_down(aiohttp_server: Any, state: str) -> None:
    """The HEALTHCHECK command itself, run here: exit 0 only for a 200 from /healthz."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": state}, status=200 if state == "ok" else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    port = (await aiohttp_server(app, host="127.0.0.1")).port if state != "down" else free_port()
    argv = [sys.executable if a == "python" else a.replace(":8080/", f":{port}/") for a in _healthcheck()]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, timeout=30)
    assert (done.returncode == 0) is (state == "ok"), done.stderr.decode()[-300:]
