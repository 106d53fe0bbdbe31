"""Builds the offline images without a registry or a Dockerfile: a root file system made on
the host, imported (`docker import`), labelled with the hash of its inputs. An image whose
label matches the inputs is not built again.

- dockmesh/toolbox: busybox-static with an applet link each, an entrypoint that writes the
  instance's /id and /health pages, and CGI scripts; `httpd -f -p 8080 -h /www` serves them.
- dockmesh/python: `debootstrap --variant=minbase --include=python3,…,nftables` from the
  machine's own mirror (cached as dockmesh/python-base:<hash>), plus dockmesh and its
  dependencies installed on the host with pip for the image's Python, added as one committed
  layer. The agent container runs it, so it carries `nft` to keep the policy's table.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dockmesh.engine.backend import EngineBackend
from dockmesh.errors import BuildError, EngineError
from dockmesh.images.sources import machine_mirror
from dockmesh.model.config import ContainerConfig
from dockmesh.model.labels import LABEL_IMAGE_INPUTS

LABEL_INPUTS = LABEL_IMAGE_INPUTS
TOOLBOX = "dockmesh/toolbox:latest"
PYTHON = "dockmesh/python:latest"
PYTHON_BASE = "dockmesh/python-base"
BUSYBOX = "/bin/busybox"
# Bumped when the recipe changes in a way the hashed inputs do not show.
RECIPE_VERSION = "1"
# nftables: the agent runs in this image and keeps the policy's table with `nft`.
BASE_PACKAGES = ("python3", "ca-certificates", "iproute2", "iputils-ping", "nftables")

Say = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildResult:
    image: str
    built: bool  # False: inputs unchanged, skipped
    inputs: str
    seconds: float = 0.0


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def _image_id(client: EngineBackend, ref: str) -> str | None:
    info = client.image(ref)
    return None if info is None else info.id


def _drop_old(client: EngineBackend, old_id: str | None, ref: str) -> None:
    """Removes the image `ref` pointed at before a rebuild, unless something still uses it."""
    if old_id is None or old_id == _image_id(client, ref):
        return
    try:
        client.remove_image(old_id)
    except EngineError as e:  # in use by a container, or tagged elsewhere: leave it
        log.info("kept the superseded image %s: %s", old_id[:19], e)


def _image_label(client: EngineBackend, ref: str) -> str | None:
    info = client.image(ref)
    return None if info is None else info.labels.get(LABEL_INPUTS)


# --- toolbox -----------------------------------------------------------------------------


def _toolbox_files() -> dict[str, tuple[bytes, int]]:
    """path in the image → (content, mode) for dockmesh's own files."""
    root = resources.files("dockmesh.images") / "toolbox"
    files: dict[str, tuple[bytes, int]] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            path = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, path + "/")
            else:
                executable = path.startswith(("bin/", "www/cgi-bin/"))
                files[path] = (child.read_bytes(), 0o755 if executable else 0o644)

    walk(root, "")
    files["etc/passwd"] = (
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )
    files["etc/group"] = (b"root:x:0:\nnobody:x:65534:\n", 0o644)
    return files


def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({a for a in out.split() if a and a != "busybox" and "/" not in a})


def toolbox_tar(busybox: str = BUSYBOX) -> tuple[bytes, str]:
    """The root file system as a tar, and the hash of its inputs."""
    bb = Path(busybox).read_bytes()
    applets = busybox_applets(busybox)
    files = _toolbox_files()
    inputs = _sha(
        RECIPE_VERSION.encode(),
        bb,
        "\n".join(applets).encode(),
        *(k.encode() + v[0] + str(v[1]).encode() for k, v in sorted(files.items())),
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, mode
            tar.addfile(ti)

        for d in ("bin", "etc", "www", "www/cgi-bin", "root", "proc", "sys", "dev", "var"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(bb), 0o755
        tar.addfile(ti, io.BytesIO(bb))
        for a in applets:
            if f"bin/{a}" in files:
                continue
            link = tarfile.TarInfo(f"bin/{a}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for path, (data, mode) in sorted(files.items()):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode = len(data), mode
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue(), inputs


def build_toolbox(
    client: EngineBackend, say: Say, force: bool = False, work_dir: str | None = None
) -> BuildResult:
    if not os.path.exists(BUSYBOX):
        raise BuildError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    data, inputs = toolbox_tar()
    if not force and _image_label(client, TOOLBOX) == inputs:
        return BuildResult(TOOLBOX, False, inputs)
    old = _image_id(client, TOOLBOX)
    say(f"importing {TOOLBOX} ({len(data) // 1024} KiB)")
    repo, tag = TOOLBOX.split(":")
    client.import_image(
        data,
        repo,
        tag,
        [
            "ENV PATH=/bin",
            'ENTRYPOINT ["/bin/dm-init"]',
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]',
            "WORKDIR /",
            f"LABEL {LABEL_INPUTS}={inputs}",
        ],
    )
    if _image_label(client, TOOLBOX) != inputs:
        raise BuildError(f"{TOOLBOX}: the engine did not keep the inputs label")
    _drop_old(client, old, TOOLBOX)
    return BuildResult(TOOLBOX, True, inputs)


# --- python --------------------------------------------------------------------------------


def project_root() -> Path | None:
    """The source tree dockmesh runs from (an editable install), if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "src" / "dockmesh").is_dir():
            return parent
    return None


def _tree_hash(root: Path) -> str:
    parts: list[bytes] = []
    # Only the package: pip writes egg-info next to it on every wheel build.
    for p in sorted((root / "src" / "dockmesh").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            parts.append(str(p.relative_to(root)).encode() + p.read_bytes())
    parts.append((root / "pyproject.toml").read_bytes())
    return _sha(*parts)


@contextmanager
def _tmpdir(prefix: str, work_dir: str | None) -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix=prefix, dir=work_dir)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


@dataclass(frozen=True, slots=True)
class BaseRecipe:
    """How the Debian base of dockmesh/python is made: the image it becomes (`repo:key`, the
    key a hash of everything that goes into it) and the debootstrap that makes its root."""

    repo: str
    key: str
    suite: str
    mirror: str
    packages: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.key}"

    def debootstrap(self, root: Path) -> list[str]:
        return [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(self.packages)}",
            self.suite,
            str(root),
            self.mirror,
        ]


def base_recipe(mirror: str, suite: str, arch: str, repo: str = PYTHON_BASE) -> BaseRecipe:
    key = _sha(
        RECIPE_VERSION.encode(),
        mirror.encode(),
        suite.encode(),
        arch.encode(),
        ",".join(BASE_PACKAGES).encode(),
    )[:16]
    return BaseRecipe(repo, key, suite, mirror, BASE_PACKAGES)


def ensure_base(
    client: EngineBackend, say: Say, work_dir: str | None, repo: str = PYTHON_BASE
) -> str:
    """The base image (built when missing), as `repo:key`. `repo` is another name only for
    a test, which must not replace the shared one."""
    mirror, suite = machine_mirror()
    recipe = base_recipe(mirror, suite, platform.machine(), repo)
    ref, key = recipe.ref, recipe.key
    if _image_label(client, ref) == key:
        return ref
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is missing: apt-get install debootstrap")
    with _tmpdir("dockmesh-rootfs-", work_dir) as tmp:
        root = tmp / "root"
        say(f"debootstrap {suite} from the machine's mirror (about a minute)")
        _run(recipe.debootstrap(root), "debootstrap")
        for junk in (
            "var/cache/apt/archives",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "var/lib/apt/lists",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        tar_path = tmp / "rootfs.tar"
        say("packing the root file system")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar_path), "."], "tar")
        say(f"importing {ref}")
        client.import_image(
            str(tar_path),
            repo,
            key,
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
                f"LABEL {LABEL_INPUTS}={key}",
            ],
        )
    return ref


def _base_python(client: EngineBackend, base: str) -> str:
    """`3.11` — the image's Python, so that pip picks matching wheels on the host."""
    name = f"dockmesh-pyprobe-{os.getpid()}"
    probe = ContainerConfig(
        name, base, command=("python3", "-c", "import sys;print(sys.version_info[:2])")
    )
    cid = client.create_container(probe)
    try:
        client.start(cid)
        client.wait(cid, timeout_s=60)
        text = client.logs(cid).decode(errors="replace").strip()  # "(3, 11)"
    finally:
        client.remove_container(cid)
    try:
        major, minor = (int(x) for x in text.strip("()").split(","))
    except ValueError:
        raise BuildError(f"{base}: could not read its Python version from {text[:80]!r}") from None
    return f"{major}.{minor}"


def build_python(
    client: EngineBackend, say: Say, force: bool = False, work_dir: str | None = None
) -> BuildResult:
    root = project_root()
    if root is None:
        raise BuildError("dockmesh/python is built from a source checkout (pip install -e .)")
    base = ensure_base(client, say, work_dir)
    inputs = _sha(RECIPE_VERSION.encode(), base.encode(), _tree_hash(root).encode())[:32]
    if not force and _image_label(client, PYTHON) == inputs:
        return BuildResult(PYTHON, False, inputs)
    old = _image_id(client, PYTHON)
    pyver = _base_python(client, base)
    with _tmpdir("dockmesh-py-", work_dir) as tmp:
        wheels = tmp / "wheels"
        say("building the dockmesh wheel")
        _run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)],
            "pip wheel",
        )
        wheel = next(wheels.glob("dockmesh-*.whl"))
        target = tmp / "layer" / "opt" / "dockmesh"
        say(f"installing dockmesh and its dependencies for Python {pyver}")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(target),
                "--python-version",
                pyver,
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--platform",
                f"manylinux2014_{platform.machine()}",
                "--platform",
                f"manylinux_2_28_{platform.machine()}",
                "--platform",
                f"manylinux_2_17_{platform.machine()}",
                str(wheel),
            ],
            "pip install",
        )
        launcher = b'#!/bin/sh\nexec python3 -m dockmesh "$@"\n'
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(tmp / "layer" / "opt", arcname="opt")
            ti = tarfile.TarInfo("usr/local/bin/dockmesh")
            ti.size, ti.mode = len(launcher), 0o755
            tar.addfile(ti, io.BytesIO(launcher))
        say(f"committing {PYTHON}")
        cid = client.create_container(
            ContainerConfig(f"dockmesh-layer-{os.getpid()}", base, command=("true",))
        )
        try:
            client.put_archive(cid, "/", buf.getvalue())
            repo, tag = PYTHON.split(":")
            client.commit(
                cid,
                repo,
                tag,
                "dockmesh layer",
                {
                    "Labels": {LABEL_INPUTS: inputs},
                    "Cmd": ["python3"],
                    "Env": [
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "LANG=C.UTF-8",
                        "PYTHONPATH=/opt/dockmesh",
                    ],
                },
            )
        finally:
            client.remove_container(cid)
    _drop_old(client, old, PYTHON)
    return BuildResult(PYTHON, True, inputs)


# Each builder: (engine, progress callback, force, the folder for temporary root file systems
# (None: the system's temporary folder)).
BUILDERS: dict[str, Callable[[EngineBackend, Say, bool, str | None], BuildResult]] = {
    "toolbox": build_toolbox,
    "python": build_python,
}
