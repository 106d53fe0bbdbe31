"""A file written as a Compose user writes it, on the real engine: `${VAR}` from `.env`, the
`<project>_default` network, a named volume whose data survives `down` + `up`, a bind mount,
`restart: always` bringing back a container whose process was killed, and a dependent
created only once its dependency is healthy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import dockmesh

FILE = """\
version: "3.8"
project: {prefix}
services:
  db:
    image: dockmesh/toolbox
    command: httpd -f -p 5432 -h /www
    restart: always
    volumes: ["data:/data"]
    healthcheck: {{tcp: true, port: 5432, interval: 1s}}
  web:
    image: dockmesh/toolbox
    command: httpd -f -p 8080 -h /www
    environment: {{DB_HOST: "${{DB_HOST}}", PRICE: "5$$"}}
    volumes: ["./site:/site:ro"]
    depends_on: {{db: {{condition: service_healthy}}}}
volumes:
  data: {{}}
"""


def run(api: Any, container: str, *cmd: str) -> tuple[int, str]:
    exec_id = api.exec_create(container, list(cmd))["Id"]
    out = api.exec_start(exec_id).decode()
    return api.exec_inspect(exec_id)["ExitCode"], out


def volumes_of(api: Any, prefix: str) -> list[str]:
    vols = (api.volumes(filters={"label": f"dockmesh.project={prefix}"}) or {}).get("Volumes")
    return sorted(v["Name"] for v in vols or [])


def wait_for(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_a_compose_users_file(api: Any, toolbox: str, prefix: str, tmp_path: Path) -> None:
    (tmp_path / "dockmesh.yaml").write_text(FILE.format(prefix=prefix))
    (tmp_path / ".env").write_text("DB_HOST=db\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hello from the host\n")
    path = str(tmp_path / "dockmesh.yaml")
    db, web = f"{prefix}-db-1", f"{prefix}-web-1"

    up = dockmesh("up", path, check=True)
    assert "warning" not in up.stderr, up.stderr
    # web was created once db was healthy
    db_info, web_info = api.inspect_container(db), api.inspect_container(web)
    assert db_info["State"]["Health"]["Status"] == "healthy"
    first_check = db_info["State"]["Health"]["Log"][0]["End"]
    assert web_info["Created"] > first_check
    # ${VAR} from .env, $$ a literal $
    env = dict(e.split("=", 1) for e in web_info["Config"]["Env"])
    assert (env["DB_HOST"], env["PRICE"]) == ("db", "5$")
    assert db_info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    # both on <project>_default, where the service name resolves
    assert set(web_info["NetworkSettings"]["Networks"]) == {f"{prefix}_default"}
    code, out = run(api, web, "ping", "-c", "1", "-W", "2", "db")
    assert code == 0, out
    # the bind mount, read-only
    assert run(api, web, "cat", "/site/index.html") == (0, "hello from the host\n")
    assert run(api, web, "touch", "/site/x")[0] != 0
    # a file in the named volume
    assert run(api, db, "sh", "-c", "echo kept > /data/f")[0] == 0
    assert volumes_of(api, prefix) == [f"{prefix}_data"]

    # kill -9 the container's process: its restart policy brings it back
    pid = db_info["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    back = wait_for(
        "db restarted",
        lambda: (
            (i := api.inspect_container(db))["State"]["Running"]
            and i["State"]["Pid"] not in (0, pid)
            and i["RestartCount"] >= 1
            and i
        ),
    )
    assert back["Id"] == db_info["Id"]

    # down keeps the volume; up again finds the data
    dockmesh("down", path, check=True)
    assert volumes_of(api, prefix) == [f"{prefix}_data"]
    dockmesh("up", path, check=True)
    assert run(api, f"{prefix}-db-1", "cat", "/data/f") == (0, "kept\n")
    # unchanged: a second plan has nothing to do
    assert "No changes" in dockmesh("plan", path, check=True).stdout

    # down --volumes removes it
    dockmesh("down", path, "--volumes", check=True)
    assert volumes_of(api, prefix) == []


COMPOSE = """\
name: {prefix}
services:
  db:
    image: dockmesh/toolbox
    command: httpd -f -p 5432 -h /www
    restart: unless-stopped
    volumes: [{{type: volume, source: data, target: /data}}]
    healthcheck: {{test: [CMD-SHELL, "nc -w 1 127.0.0.1 5432 </dev/null"], interval: 1s}}
    container_name: ignored
  web:
    image: dockmesh/toolbox
    command: httpd -f -p 8080 -h /www
    env_file: app.env
    environment: {{DB_HOST: "${{DB_HOST:-db}}"}}
    depends_on: {{db: {{condition: service_healthy}}}}
volumes:
  data:
"""


def test_a_compose_file_converts_and_comes_up(
    api: Any, toolbox: str, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.format(prefix=prefix))
    (tmp_path / "app.env").write_text("MODE=prod\n")
    out = str(tmp_path / "dockmesh.yaml")
    conv = dockmesh("convert", str(tmp_path / "docker-compose.yml"), "-o", out, check=True)
    assert "services.db.container_name: not converted" in conv.stderr
    dockmesh("up", out, check=True)
    web = api.inspect_container(f"{prefix}-web-1")
    env = dict(e.split("=", 1) for e in web["Config"]["Env"])
    assert (env["DB_HOST"], env["MODE"]) == ("db", "prod")
    db = api.inspect_container(f"{prefix}-db-1")
    assert db["State"]["Health"]["Status"] == "healthy"
    assert db["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert [m["Name"] for m in db["Mounts"]] == [f"{prefix}_data"]
    dockmesh("down", out, "--volumes", check=True)
    assert volumes_of(api, prefix) == []
