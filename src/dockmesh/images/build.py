"""Builds the offline images without a registry or a Dockerfile: a root file system made on
the host, imported (`docker import`), labelled with the hash of its inputs. An image whose
label matches the inputs is not built again.

- dockmesh/toolbox: busybox-static with an applet link each, an entrypoint that writes the
  instance's /id and /health pages, and CGI scripts; `httpd -f -p 8080 -h /www` serves them.
- dockmesh/python: `debootstrap --variant=minbase --include=python3,…,nftables` from the
  machine's own mirror (cached as dockmesh/python-base:<hash>), plus dockmesh and its
  dependencies installed on the host with pip for the image's Python, added as one committed
  layer. The agent container runs it, so it carries `nft` to keep the policy's table.
  dockmesh itself comes from the source checkout it runs from (an editable install), else
  from the installed distribution's own files, made into a wheel again: every input of both
  images is inside the package, so a wheel alone builds them.

$DOCKMESH_IMAGE_REPO_PREFIX names the images `<prefix>/toolbox:latest` and
`<prefix>/python:latest` instead of `dockmesh/…` (a test builds under its own name and never
replaces the shared images). The base stays dockmesh/python-base:<hash>: a cache named by its
inputs, never replaced, shared by every name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import Any

from dockmesh.engine.backend import EngineBackend
from dockmesh.errors import BuildError, EngineError, UsageError
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
REPO_PREFIX_ENV = "DOCKMESH_IMAGE_REPO_PREFIX"
# A repository path as the engine accepts it: lower-case components joined by '/'.
_REPO = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)

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


def repo_prefix(env: Mapping[str, str] | None = None) -> str:
    """The images' repository prefix: `dockmesh`, or $DOCKMESH_IMAGE_REPO_PREFIX."""
    value = (os.environ if env is None else env).get(REPO_PREFIX_ENV) or "dockmesh"
    if len(value) > 200 or not _REPO.fullmatch(value):
        raise UsageError(
            f"${REPO_PREFIX_ENV} {value!r}: lower-case letters, digits, '.', '_' and '-' "
            "in components joined by '/', like dockmesh or test/dockmesh"
        )
    return value


def toolbox_image(env: Mapping[str, str] | None = None) -> str:
    return f"{repo_prefix(env)}/toolbox:latest"


def python_image(env: Mapping[str, str] | None = None) -> str:
    """The agent's image: `dockmesh/python:latest` unless $DOCKMESH_IMAGE_REPO_PREFIX says."""
    return f"{repo_prefix(env)}/python:latest"


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
    image = toolbox_image()
    data, inputs = toolbox_tar()
    if not force and _image_label(client, image) == inputs:
        return BuildResult(image, False, inputs)
    old = _image_id(client, image)
    say(f"importing {image} ({len(data) // 1024} KiB)")
    repo, tag = image.split(":")
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
    if _image_label(client, image) != inputs:
        raise BuildError(f"{image}: the engine did not keep the inputs label")
    _drop_old(client, old, image)
    return BuildResult(image, True, inputs)


# --- python --------------------------------------------------------------------------------


def project_root() -> Path | None:
    """The source tree dockmesh runs from (an editable install), if any: this very file is
    its src/dockmesh/images/build.py. (An installed copy in a venv that happens to sit inside
    a checkout is not that checkout's.)"""
    here = Path(__file__).resolve()
    for parent in here.parents:
        package = parent / "src" / "dockmesh"
        if (parent / "pyproject.toml").exists() and here.is_relative_to(package):
            return parent
    return None


# What an installed distribution holds that a wheel does not: the installer's own notes
# (RECORD is written anew).
_INSTALLER_NOTES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def wheel_paths(paths: Iterable[str], package: str = "dockmesh") -> list[str]:
    """Of an installed distribution's files (relative to site-packages, as its RECORD names
    them), those a wheel of it carries: the package and its .dist-info, without byte code,
    the installer's notes or the console scripts pip wrote outside site-packages. Sorted."""
    keep: set[str] = set()
    for raw in paths:
        p = PurePosixPath(raw)
        parts = p.parts
        if not parts or ".." in parts or p.is_absolute():
            continue
        if "__pycache__" in parts or p.suffix in (".pyc", ".pyo"):
            continue
        top = parts[0]
        info = top.endswith(".dist-info") and top.split("-", 1)[0] == package
        note = len(parts) == 2 and parts[1] in _INSTALLER_NOTES
        if len(parts) > 1 and (top == package or (info and not note)):
            keep.add(str(p))
    return sorted(keep)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def make_wheel(files: Mapping[str, bytes]) -> tuple[str, bytes]:
    """A wheel (its file name, its bytes) holding `files` — paths as wheel_paths gives them,
    one .dist-info among them — with a RECORD made for it. Deterministic: the same files
    make the same bytes."""
    infos = sorted({p.split("/", 1)[0] for p in files if p.split("/", 1)[0].endswith(".dist-info")})
    if len(infos) != 1:
        raise BuildError(f"the installed dockmesh has {len(infos)} .dist-info folders, not one")
    info = infos[0]
    name, _, version = info.removesuffix(".dist-info").partition("-")
    record = f"{info}/RECORD"
    lines = [f"{p},{_record_hash(files[p])},{len(files[p])}" for p in sorted(files)]
    lines.append(f"{record},,")
    members = {**files, record: ("\n".join(lines) + "\n").encode()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(members):
            zi = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, members[path])
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


def installed_files(dist_name: str = "dockmesh") -> dict[str, bytes]:
    """The installed distribution's files a wheel carries (wheel_paths), read from where it is
    installed."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise BuildError(f"{dist_name} is not installed as a distribution (no metadata)") from None
    by_name = {str(PurePosixPath(*f.parts)): f for f in dist.files or ()}
    chosen = wheel_paths(by_name)
    if not any(p.startswith(f"{dist_name}/") for p in chosen):
        raise BuildError(
            f"the installed {dist_name} lists none of its package's files (an editable install "
            "whose source tree is gone?): reinstall it with pip"
        )
    return {p: Path(str(dist.locate_file(by_name[p]))).read_bytes() for p in chosen}


def files_hash(files: Mapping[str, bytes]) -> str:
    return _sha(*(p.encode() + b"\0" + files[p] for p in sorted(files)))


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
    image = python_image()
    root = project_root()
    # dockmesh itself: the checkout's tree, or the installed files (what this process runs).
    installed = installed_files() if root is None else None
    tree = _tree_hash(root) if root is not None else files_hash(installed or {})
    base = ensure_base(client, say, work_dir)
    inputs = _sha(RECIPE_VERSION.encode(), base.encode(), tree.encode())[:32]
    if not force and _image_label(client, image) == inputs:
        return BuildResult(image, False, inputs)
    old = _image_id(client, image)
    pyver = _base_python(client, base)
    with _tmpdir("dockmesh-py-", work_dir) as tmp:
        wheels = tmp / "wheels"
        if root is not None:
            say("building the dockmesh wheel")
            pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
            _run([*pip_wheel, "-w", str(wheels), str(root)], "pip wheel")
            wheel = next(wheels.glob("dockmesh-*.whl"))
        else:
            say("making a wheel of the installed dockmesh")
            wheels.mkdir()
            name, data = make_wheel(installed or {})
            wheel = wheels / name
            wheel.write_bytes(data)
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
        say(f"committing {image}")
        cid = client.create_container(
            ContainerConfig(f"dockmesh-layer-{os.getpid()}", base, command=("true",))
        )
        try:
            client.put_archive(cid, "/", buf.getvalue())
            repo, tag = image.split(":")
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
    _drop_old(client, old, image)
    return BuildResult(image, True, inputs)


# Each builder: (engine, progress callback, force, the folder for temporary root file systems
# (None: the system's temporary folder)).
BUILDERS: dict[str, Callable[[EngineBackend, Say, bool, str | None], BuildResult]] = {
    "toolbox": build_toolbox,
    "python": build_python,
}
