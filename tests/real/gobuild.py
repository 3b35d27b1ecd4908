"""Build the real Kubernetes programs the real-apiserver suite drives, once per version, from the Go
module proxy, and cache them under ``~/.cache/apiproxy/``.

``go.mod`` beside this file pins ``k8s.io/kubernetes`` and replaces each of its staging modules with the
published ``k8s.io/*`` release of the same minor version, so ``go build k8s.io/kubernetes/cmd/...`` works
outside the Kubernetes repository. istiod (``pilot-discovery``) lives in its own module, ``istiod/``, because
Istio pins other ``k8s.io/*`` minors than the apiserver does. A binary's cache name carries the version and
a digest of its module's ``go.mod``, ``go.sum`` and (for our own programs) their sources, so a warm machine
never rebuilds and a changed pin always does.

Run as ``python -m tests.real.gobuild [NAME ...]`` to build ahead of the tests (``make test-real`` does);
progress goes to stderr, and a missing Go or a failed build is one clear line and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("APIPROXY_CACHE", Path.home() / ".cache" / "apiproxy"))


class BuildError(RuntimeError):
    """Go is missing, the module proxy cannot serve the build, or the build failed; one line says which."""


@dataclass(frozen=True)
class Program:
    name: str
    package: str
    #: The module whose pinned version names the binary in the cache.
    module: str = "k8s.io/kubernetes"
    #: Directory (under tests/real) whose Go sources are ours and part of the cache key.
    sources: str | None = None
    tags: str = ""
    #: Packages whose ``gitVersion`` & co. are stamped with the pinned version, as Kubernetes' own build
    #: does: clients (istiod among them) parse ``/version``, and ``v0.0.0-master`` is not a release.
    version_packages: tuple[str, ...] = ()
    #: The Go module directory (under tests/real) the program is built in; its go.mod pins ``module``.
    directory: str = "."
    #: Istio's ``pkg/version`` is stamped like Istio's own build does (release line and commit), so
    #: istiod's log and ``/version`` name what actually runs instead of ``unknown``.
    istio_version: bool = False
    #: Built by a bare ``python -m tests.real.gobuild`` (``make real-binaries``); istiod is not: only
    #: ``make test-istio`` pays for it.
    default: bool = True

    @property
    def go_mod(self) -> Path:
        return HERE / self.directory / "go.mod"


PROGRAMS = {
    "kube-apiserver": Program(
        "kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        tags="providerless",
        version_packages=("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"),
    ),
    # etcd at the version kube-apiserver is built against. Debian's etcd-server (3.4.23) lacks the
    # watch-progress requests kube-apiserver needs (3.4.31+/3.5.13+) for streaming watch-lists
    # (sendInitialEvents=true): with it, every such watch fails with a 500 "RequestWatchProgress is
    # disabled", which a real cluster never does.
    "etcd": Program("etcd", "go.etcd.io/etcd/server/v3", module="go.etcd.io/etcd/server/v3"),
    "informer": Program("informer", "./informer", sources="informer"),
    "pilot-discovery": Program(
        "pilot-discovery",
        "istio.io/istio/pilot/cmd/pilot-discovery",
        module="istio.io/istio",
        directory="istiod",
        istio_version=True,
        default=False,
    ),
}


def module_version(module: str = "k8s.io/kubernetes", go_mod: Path = HERE / "go.mod") -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod.read_text(), re.MULTILINE)
    if not match:
        raise BuildError(f"{go_mod} does not require {module}")
    return match.group(1)


def _digest(program: Program) -> str:
    h = hashlib.sha256()
    for path in (program.go_mod, program.go_mod.with_name("go.sum")):
        h.update(path.read_bytes())
    if program.sources:
        for path in sorted((HERE / program.sources).rglob("*.go")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cached_path(name: str) -> Path:
    program = PROGRAMS[name]
    return CACHE / f"{name}-{module_version(program.module, program.go_mod)}-{_digest(program)}"


def _go(name: str) -> str:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if go is None:
        raise BuildError(f"make test-real needs Go >= 1.26 on PATH (`go` not found) to build {name}")
    return go


def module_source(module: str = "istio.io/istio", directory: str = "istiod") -> Path:
    """The pinned ``module``'s source tree in the module cache (downloaded when missing): Istio's CRDs and
    its ``VERSION`` file come from the very commit the binary is built from."""
    try:
        out = subprocess.run(
            [_go(f"{module} (its source)"), "mod", "download", "-json", module],
            cwd=HERE / directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"go mod download {module} failed: {exc}") from None
    found = json.loads(out).get("Dir")
    if not found:
        raise BuildError(f"go mod download {module} did not report the module directory")
    return Path(found)


def istio_release() -> str:
    """The release line of the pinned Istio source (its ``VERSION`` file, e.g. ``1.31``).

    Istio tags releases without the ``v`` Go needs, so the module proxy serves only pseudo-versions;
    the source tree itself says which release a commit belongs to.
    """
    return (module_source() / "VERSION").read_text().strip()


def _istio_stamp(version: str) -> list[str]:
    package = "istio.io/istio/pkg/version"
    revision = version.rsplit("-", 1)[-1]
    return [
        f"-X {package}.buildVersion={istio_release()}-dev+{revision}",
        f"-X {package}.buildGitRevision={revision}",
        f"-X {package}.buildStatus=Clean",
        f"-X {package}.buildTag={version}",
    ]


def ensure(name: str, *, log: bool = True) -> Path:
    """The cached binary for ``name``, building it first when this machine has none."""
    target = cached_path(name)
    if target.exists():
        return target
    program = PROGRAMS[name]
    go = _go(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    version = module_version(program.module, program.go_mod)
    workdir = HERE / program.directory
    major, minor = version.lstrip("v").split(".")[:2]
    ldflags = ["-s", "-w"]
    for package in program.version_packages:
        ldflags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    if program.istio_version:
        ldflags += _istio_stamp(version)
    cmd = [go, "build", "-trimpath", f"-ldflags={' '.join(ldflags)}", "-o", str(tmp)]
    if program.tags:
        cmd.append(f"-tags={program.tags}")
    cmd += ["-v", program.package]
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if log else (lambda m: None)
    say(f"building {name} {version} from the Go module proxy (the first time takes minutes) ...")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    tail: list[str] = []
    compiled = 0
    stop = threading.Event()

    def progress() -> None:
        while not stop.wait(15):
            say(f"  {name}: {compiled} packages compiled, {time.monotonic() - started:.0f}s")

    ticker = threading.Thread(target=progress, daemon=True)
    ticker.start()
    for line in proc.stderr:
        line = line.rstrip()
        if line.startswith(("go: downloading", "go: finding")) or ("/" in line and " " not in line):
            compiled += 1
        else:
            tail = [*tail[-20:], line]
    code = proc.wait()
    stop.set()
    if code != 0:
        tmp.unlink(missing_ok=True)
        detail = next((t for t in reversed(tail) if t.strip()), "no output")
        raise BuildError(f"go build {program.package} failed (exit {code}): {detail}")
    tmp.replace(target)
    say(f"built {target} in {time.monotonic() - started:.0f}s")
    return target


def main(argv: list[str]) -> int:
    names = argv or [name for name, program in PROGRAMS.items() if program.default]
    for name in names:
        if name not in PROGRAMS:
            print(f"unknown program {name!r}; known: {', '.join(PROGRAMS)}", file=sys.stderr)
            return 2
        try:
            print(ensure(name))
        except BuildError as exc:
            print(f"test-real: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
