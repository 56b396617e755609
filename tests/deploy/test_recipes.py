"""The deployment recipes kept in the repository, verified.

- deploy/usagebot.service passes `systemd-analyze verify` (skipped where the tool is missing), and
  docs/operations.md shows exactly that file.
- Dockerfile: there is no container engine here, so its steps are run as they are written, in a
  fresh virtualenv: the build stage's COPY list into an empty context and its RUN (build the wheel),
  the runtime stage's RUN (a new virtualenv, pip install of the wheel), then the ENTRYPOINT + CMD
  with the image's ENV against PostgreSQL as compose.yaml wires it, and the HEALTHCHECK command.
  Paths of the image (/src, /wheels, /opt/usagebot/venv, /etc/usagebot, /var/lib/usagebot) are
  mapped into a temporary folder; the only step not run is `useradd` (it changes the machine).
- compose.yaml wires usagebot to PostgreSQL the way the image expects.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "usagebot.service"


# ----------------------------------------------------------------------------- systemd


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit runs /opt/usagebot/venv/bin/usagebot; here that is the test's usagebot (verify checks that
    # every Exec command exists). Nothing else is changed.
    text = UNIT.read_text().replace("/opt/usagebot/venv/bin/usagebot", str(Path(sys.executable).with_name("usagebot")))
    unit = tmp_path / "usagebot.service"
    unit.write_text(text)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "usagebot.service" in line]
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr


def test_a_unit_with_inline_comments_would_fail_the_check(tmp_path: Path) -> None:
    """What the old documented unit did: `TimeoutStopSec=45   # comment` is not a comment in systemd."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text().replace("/opt/usagebot/venv/bin/usagebot", "/bin/true")
    unit = tmp_path / "usagebot.service"
    unit.write_text(text.replace("TimeoutStopSec=45", "TimeoutStopSec=45   # > shutdown_timeout"))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "usagebot.service:" in proc.stdout + proc.stderr  # the check above would catch it


def test_the_docs_show_the_unit_file_verbatim() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert f"```ini\n{UNIT.read_text()}```" in doc


# ----------------------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return stages


def _env(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_dockerfile_steps_build_and_run_usagebot_in_a_fresh_virtualenv(tmp_path: Path, pg_server) -> None:  # type: ignore[no-untyped-def]
    build, runtime = _instructions((ROOT / "Dockerfile").read_text())
    image = tmp_path / "image"
    paths = {"/src": image / "src", "/wheels": image / "wheels", "/opt/usagebot/venv": image / "opt/usagebot/venv",
             "/etc/usagebot": image / "etc/usagebot", "/var/lib/usagebot": image / "var/lib/usagebot"}

    def mapped(text: str) -> str:
        for inside, outside in paths.items():
            text = text.replace(inside, str(outside))
        return re.sub(r"(^|&& )python ", rf"\g<1>{sys.executable} ", text)

    def run(cmd: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        # pip's cache is used (--no-cache-dir only keeps the image small); otherwise the step is as written
        cmd = mapped(cmd).replace("--no-cache-dir ", "")
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])

    # build stage: COPY into an empty context (so a file missing from the list fails here), then RUN
    workdir = paths["/src"]
    workdir.mkdir(parents=True)
    for instr, args in build[1:]:
        if instr == "COPY":
            *sources, dest = args.split()
            for src in sources:
                origin = ROOT / src
                target = workdir / (Path(dest) / origin.name if dest.endswith("/") else Path(dest))
                if origin.is_dir():
                    shutil.copytree(origin, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
        elif instr == "RUN":
            run(args, workdir)
    wheels = list(paths["/wheels"].glob("usagebot-*.whl"))
    assert len(wheels) == 1

    # runtime stage
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    entry: list[str] = []
    health: list[str] = []
    for instr, args in runtime[1:]:
        if instr == "ENV":
            env.update({k: mapped(v.replace("$PATH", env["PATH"])) for k, v in _env(args).items()})
        elif instr == "RUN" and not args.startswith("useradd "):
            run(args, tmp_path, env)
        elif instr == "WORKDIR":
            workdir = Path(mapped(args))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instr == "ENTRYPOINT":
            entry = json.loads(args)
        elif instr == "CMD":
            entry += json.loads(args)
        elif instr == "HEALTHCHECK":
            health = json.loads(args.split(" CMD ", 1)[1])
    assert not paths["/wheels"].exists()  # removed by the RUN step
    assert entry == ["usagebot", "serve"] and env["USAGEBOT_CONFIG"] == str(paths["/etc/usagebot"] / "config.toml")
    usagebot = shutil.which("usagebot", path=env["PATH"])
    assert usagebot == str(paths["/opt/usagebot/venv"] / "bin" / "usagebot")  # the image's PATH finds it

    # the config compose.yaml mounts at /etc/usagebot, and its database: PostgreSQL
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    svc_env = compose["services"]["usagebot"]["environment"]
    assert svc_env["USAGEBOT_CONFIG"] == "/etc/usagebot/config.toml"
    env["USAGEBOT_DB_URL"] = pg_server.fresh_schema("docker")
    init = subprocess.run([usagebot, "init", str(paths["/etc/usagebot"]), "--demo"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    once = subprocess.run([usagebot, *entry[1:], "--once"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert once.returncode == 0, once.stderr[-3000:]
    assert "FIRED ·" in once.stdout
    assert re.search(r"database postgresql\S* migrated", once.stderr), once.stderr  # PostgreSQL, from the env

    # the service as the container runs it, and the HEALTHCHECK against it; STOPSIGNAL SIGTERM stops it cleanly
    port = _free_port()
    proc = subprocess.Popen([usagebot, *entry[1:]], cwd=workdir, env={**env, "USAGEBOT_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        check = [mapped(a) if i == 0 else a.replace("8080", str(port)) for i, a in enumerate(health)]
        check[0] = str(paths["/opt/usagebot/venv"] / "bin" / "python") if check[0] == "python" else check[0]
        deadline = time.monotonic() + 60
        while True:
            ok = subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ok, "HEALTHCHECK failed"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0


def test_compose_wires_usagebot_to_postgresql() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    db, app = compose["services"]["db"], compose["services"]["usagebot"]
    assert db["image"].startswith("postgres:") and "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert app["build"] == "." and app["depends_on"]["db"]["condition"] == "service_healthy"
    url = app["environment"]["USAGEBOT_DB_URL"]
    assert re.match(r"postgresql://usagebot:\$\{POSTGRES_PASSWORD:-usagebot\}@db:5432/usagebot$", url)
    assert db["environment"]["POSTGRES_DB"] == "usagebot" and db["environment"]["POSTGRES_USER"] == "usagebot"
    assert "./deploy/config:/etc/usagebot:ro" in app["volumes"]
    assert app["ports"] == ["8080:8080"]
    grace = int(app["stop_grace_period"].rstrip("s"))
    assert grace > 30  # above [service] shutdown_timeout, like TimeoutStopSec in the systemd unit
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text()
