"""Components → build steps. Pure.

Input: one variant's checked ``Content``, what its parent image hands over (a ``Handover``) and
its base. Output: the ``Planned`` steps in cache-aware order (what changes rarely comes first: OS
packages, CUDA, the release environment, Python, TensorFlow, pip requirements, then files,
environment and labels), the build-context files, and the ``Handover`` of this image to its
children.

Every ``Run`` step starts with ``STEP_ENV`` (see there) and every step that runs a package
manager ends with ``packages.leftovers``: a step leaves only what depends on its inputs
(docs/reproducibility.md).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hepml_images import compat, ir, lockfile
from hepml_images.components import packages

if TYPE_CHECKING:
    from hepml_images.spec.model import Content, Family

ENTRYPOINT_SCRIPT = "/opt/hepml/entrypoint.sh"
REQUIREMENTS_DIR = "/.hepml/requirements"


#: ``SOURCE_DATE_EPOCH`` in the environment of every ``Run`` step. Python then writes
#: hash-checked bytecode (pip, ensurepip, py_compile, Debian's py3compile: ``.pyc`` files that
#: carry the source's hash, not its mtime, so they are the same on every build and stay valid
#: when the builder clamps file times), and other tools that embed a date (wheel's zip times,
#: gcc's ``__DATE__``) embed this one. A constant, not the build's epoch: the layers depend on
#: the step's inputs only, not on the commit time, and the layer cache survives a new commit.
#: 1980-01-01, the earliest time a zip file (a wheel built from source) can hold.
STEP_EPOCH = 315532800
STEP_ENV = f"export SOURCE_DATE_EPOCH={STEP_EPOCH}"


def step_commands(commands: tuple[str, ...]) -> tuple[str, ...]:
    """A Run step's commands, with ``STEP_ENV`` first (nothing for no commands)."""
    return (STEP_ENV, *commands) if commands else ()


@dataclass(frozen=True, kw_only=True)
class PythonEnv:
    """The interpreter and venv that later steps and child images use."""

    version: str
    venv: str

    @property
    def python(self) -> str:
        """The venv's interpreter."""
        return f"{self.venv}/bin/python"


@dataclass(frozen=True, kw_only=True)
class Handover:
    """What an image hands over to the specs built FROM it (what a child starts from)."""

    family: Family
    release: str | None
    python: PythonEnv | None = None
    wrapper: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None
    versions: tuple[tuple[str, str], ...] = ()
    tests: tuple[ir.Test, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None


#: A pip step that builds extensions from source compiles them through a small wrapper of gcc
#: that maps the build directory to ``.`` (``-ffile-prefix-map``) and without debug information:
#: pip builds in random directories (``/tmp/pip-install-…``), which ``__FILE__`` (h5py's setup
#: names its sources by absolute path) and the debug information would otherwise put into every
#: module, making each build of the same sources another file (docs/reproducibility.md).
FROM_SOURCE_CC = "/tmp/hepml-cc"  # noqa: S108 - written and removed within one step
FROM_SOURCE_WRAPPER = (
    f"printf '%s\\n' '#!/bin/sh' 'exec gcc -ffile-prefix-map=\"$PWD\"=. \"$@\"' > {FROM_SOURCE_CC}",
    f"chmod 755 {FROM_SOURCE_CC}",
)
FROM_SOURCE_ENV = f"CC={FROM_SOURCE_CC} CFLAGS=-g0"


def _from_source(before: tuple[str, ...], pip_cmd: str, after: tuple[str, ...]) -> tuple[str, ...]:
    """The commands of a pip step that builds from source: toolchain, wrapper, pip, clean-up."""
    return (
        *before,
        *FROM_SOURCE_WRAPPER,
        f"{FROM_SOURCE_ENV} {pip_cmd}",
        f"rm -f {FROM_SOURCE_CC}",
        *after,
    )


@dataclass(frozen=True, kw_only=True)
class TensorflowInstall:
    """How TensorFlow is installed, decided by the resolver from the compatibility data."""

    requirement: str
    cuda: str | None
    cudnn: str | None


@dataclass(kw_only=True)
class _Builder:
    steps: list[ir.Step] = field(default_factory=list)
    context: list[ir.ContextFile] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)

    def run(
        self,
        title: str,
        commands: tuple[str, ...],
        wrapper: tuple[str, ...] = (),
        *,
        network: bool = True,
    ) -> None:
        if commands:
            self.steps.append(
                ir.Run(
                    title=title,
                    commands=step_commands(commands),
                    wrapper=wrapper,
                    network=network,
                )
            )

    def set_env(self, *items: tuple[str, str], merge: bool = True) -> None:
        last = self.steps[-1] if self.steps else None
        if merge and isinstance(last, ir.SetEnv):
            self.steps[-1] = ir.SetEnv(items=(*last.items, *items))
        else:
            self.steps.append(ir.SetEnv(items=items))
        self.env.extend(items)


@dataclass(frozen=True, kw_only=True)
class Planned:
    """Steps and context of one image, and what it hands over to its children."""

    steps: tuple[ir.Step, ...]
    context: tuple[ir.ContextFile, ...]
    #: entrypoint and cmd are still the parent's: the resolver sets this image's runtime
    handover: Handover


def _pip(python: PythonEnv, args: str) -> str:
    pip = f"{shlex.quote(python.python)} -m pip install"
    return f"{pip} --no-cache-dir --disable-pip-version-check {args}"


def os_packages(content: Content, family: Family) -> tuple[str, ...]:
    """Every distribution package this spec's components need, sorted."""
    comps = content.components
    wanted: set[str] = set()
    apt = family in {"debian", "ubuntu"}
    if comps.system_packages is not None:
        wanted.update(comps.system_packages.packages)
    if comps.hdf5 is not None:
        wanted.update({"libhdf5-dev", "hdf5-tools"} if apt else {"hdf5", "hdf5-devel"})
    if comps.python is not None and comps.python.source == "system":
        if apt:
            wanted.update({"python3", "python3-venv"})
        elif comps.python.interpreter == "python3":
            wanted.update({"python3", "python3-pip"})
        else:
            wanted.update({comps.python.interpreter, f"{comps.python.interpreter}-pip"})
    return tuple(sorted(wanted))


def _cuda_system(content: Content, family: Family, release: str | None) -> tuple[str, ...]:
    cuda = content.components.cuda
    if cuda is None or cuda.source != "system":
        return ()
    repo = packages.nvidia_repo_name(family, release)
    base = f"https://developer.download.nvidia.com/compute/cuda/repos/{repo}/x86_64"
    dashed = cuda.version.replace(".", "-")
    libs = [f"cuda-libraries-{dashed}"]
    if cuda.cudnn is not None:
        major = cuda.cudnn.split(".", 1)[0]
        cuda_major = cuda.version.split(".", 1)[0]
        if major != "8":
            libs.append(f"libcudnn{major}-cuda-{cuda_major}")
        elif family in {"debian", "ubuntu"}:
            libs.append("libcudnn8")
        else:
            # yum/dnf match the glob themselves: the newest 8.x build of this cuDNN minor
            libs.append(f"libcudnn8-{cuda.cudnn}.*")
    if family in {"debian", "ubuntu"}:
        keyring = f"{base}/cuda-keyring_1.1-1_all.deb"
        return (
            *packages.install(family, ["ca-certificates", "curl"]),
            f"curl -fsSLo /tmp/cuda-keyring.deb {shlex.quote(keyring)}",
            "dpkg -i /tmp/cuda-keyring.deb",
            "rm -f /tmp/cuda-keyring.deb",
            *packages.install(family, libs),
        )
    repo_file = f"/etc/yum.repos.d/cuda-{repo}.repo"
    manager = "dnf" if family == "el9" else "yum"
    return (
        # curl-minimal (el9) or curl is usually there; installing curl over curl-minimal conflicts
        f"{{ command -v curl >/dev/null || {manager} install -y curl; }}",
        f"curl -fsSLo {repo_file} {shlex.quote(f'{base}/cuda-{repo}.repo')}",
        *packages.install(family, libs),
    )


def plan(  # noqa: PLR0913 - keyword-only: what a plan depends on
    content: Content,
    *,
    parent: Handover,
    base: ir.Base,
    tensorflow: TensorflowInstall | None,
    versions: tuple[tuple[str, str], ...],
    lock: lockfile.Lock | None = None,
    parent_lock: lockfile.Lock | None = None,
) -> Planned:
    """Turn one variant's components into steps, in cache-aware order.

    With a ``lock``, the package-manager step installs the locked ``name=version`` of every
    package the parent's lock does not hold, and one pip step installs the locked Python
    distributions the parent's lock does not hold (``--no-deps --require-hashes``) in place of
    the TensorFlow and requirements steps.
    """
    comps = content.components
    family = parent.family
    out = _Builder()
    user = content.user or parent.user
    if user not in {None, "root", "0"}:
        out.steps.append(ir.User(name="root"))

    setup: tuple[str, ...] = ()
    if isinstance(base, ir.FromImage) and family == "el7":
        setup = packages.el7_vault()
    wanted: tuple[str, ...] = os_packages(content, family)
    if wanted and lock is not None and lock.os.resolved:
        wanted = tuple(
            packages.pinned(family, name, version)
            for name, version in lockfile.new_os_packages(lock, parent_lock)
        )
    needs_epel = comps.hdf5 is not None and family in {"el7", "el9"}
    install = packages.install(family, wanted) if wanted else ()
    out.run(
        "distribution packages", (*setup, *(packages.epel(family) if needs_epel else ()), *install)
    )

    if comps.cuda is not None:
        out.run(
            "CUDA and cuDNN from NVIDIA's repository", _cuda_system(content, family, parent.release)
        )
    cuda_version = comps.cuda.version if comps.cuda is not None else None
    if cuda_version is None and tensorflow is not None:
        cuda_version = tensorflow.cuda
    if cuda_version is not None:
        # The NVIDIA container runtime reads these; NVIDIA_REQUIRE_CUDA makes it refuse a
        # host driver that is too old for this CUDA before the container starts, and admits
        # exactly the drivers the smoke tests' driver preflight admits (minor-version
        # compatibility included; resolve has checked that the CUDA version is in the table).
        out.set_env(
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
            ("NVIDIA_REQUIRE_CUDA", compat.nvidia_require_cuda(cuda_version)),
        )

    wrapper = parent.wrapper
    if comps.analysisbase is not None:
        script = (
            "#!/bin/bash\n"
            "# Set up the ATLAS AnalysisBase release environment, then run the command.\n"
            f"source {shlex.quote(comps.analysisbase.setup)}\n"
            "# The release setup puts its own directories first; a venv goes before them again.\n"
            'if [ -n "${VIRTUAL_ENV:-}" ]; then PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH; fi\n'
            'exec "$@"\n'
        )
        out.context.append(
            ir.ContextFile(name="hepml-entrypoint.sh", content=script.encode(), mode=0o755)
        )
        out.steps.append(ir.Copy(src="hepml-entrypoint.sh", dest=ENTRYPOINT_SCRIPT, mode=0o755))
        wrapper = (ENTRYPOINT_SCRIPT,)

    python = parent.python
    if comps.python is not None:
        spec_py = comps.python
        venv = spec_py.venv
        flags = " --system-site-packages" if spec_py.system_site_packages else ""
        out.run(
            f"Python {spec_py.version} virtual environment",
            (f"{shlex.quote(spec_py.interpreter)} -m venv{flags} {shlex.quote(venv)}",),
            wrapper,
            network=False,
        )
        out.set_env(("VIRTUAL_ENV", venv), ("PATH", f"{venv}/bin:${{PATH}}"))
        out.set_env(("PIP_DISABLE_PIP_VERSION_CHECK", "1"), ("PIP_NO_CACHE_DIR", "1"))
        python = PythonEnv(version=spec_py.version, venv=venv)

    locked = (
        lock is not None
        and python is not None
        and bool(lock.packages)
        and (tensorflow is not None or (comps.pip is not None and not comps.pip.require_hashes))
    )
    if locked and lock is not None and python is not None:
        _locked_pip(
            out,
            content=content,
            lock=lock,
            parent_lock=parent_lock,
            python=python,
            family=family,
            wrapper=wrapper,
        )
    elif tensorflow is not None and python is not None:
        out.run(
            "TensorFlow",
            (_pip(python, shlex.quote(tensorflow.requirement)),),
            wrapper,
        )

    if (
        comps.pip is not None
        and python is not None
        and not (locked and not comps.pip.require_hashes)
    ):
        pip = comps.pip
        index = ["--index-url", shlex.quote(pip.index_url)] if pip.index_url else []
        sources: list[tuple[str, bytes, bool]] = []
        if pip.file is not None and pip.file_content is not None:
            filename = pip.file.rsplit("/", 1)[-1]
            if lockfile.is_pylock_name(filename):  # a PEP 751 lock given as input
                given = lockfile.Lock(
                    spec=content.name,
                    variant=filename,
                    inputs=lockfile.Inputs(),
                    packages=lockfile.read_pylock(pip.file_content),
                )
                converted = lockfile.requirements_text(given, source=filename)
                sources.append((f"{filename.removesuffix('.toml')}.txt", converted, True))
            else:
                sources.append((filename, pip.file_content, pip.require_hashes))
        if pip.requirements:
            text = "".join(f"{req}\n" for req in pip.requirements)
            sources.append((f"{content.name}.inline-requirements.txt", text.encode(), False))
        for name, data, hashed in sources:
            dest = f"{REQUIREMENTS_DIR}/{name}"
            out.context.append(ir.ContextFile(name=f"requirements/{name}", content=data))
            out.steps.append(ir.Copy(src=f"requirements/{name}", dest=dest))
            hash_flags = ["--no-deps", "--require-hashes"] if hashed else []
            no_binary = [f"--no-binary={shlex.quote(p)}" for p in pip.build_from_source]
            pip_cmd = _pip(
                python, " ".join([*index, *hash_flags, *no_binary, "-r", shlex.quote(dest)])
            )
            if pip.build_from_source:
                interpreter = comps.python.interpreter if comps.python else "python3"
                before, after = packages.toolchain(family, interpreter)
                commands: tuple[str, ...] = _from_source(before, pip_cmd, after)
            else:
                commands = (pip_cmd,)
            out.run(f"pip requirements ({name})", commands, wrapper)

    for copy in content.files:
        ctx = f"files/{copy.src}"
        mode = int(copy.mode, 8) if copy.mode else None
        out.context.append(ir.ContextFile(name=ctx, content=copy.content, mode=mode or 0o644))
        out.steps.append(ir.Copy(src=ctx, dest=copy.dest, mode=mode))

    # One ENV per variable: Docker substitutes `$NAME` inside one ENV instruction with the values
    # from before it, a shell's exports one after the other; separate instructions agree.
    for item in content.env:
        out.set_env(item, merge=False)

    workdir = content.workdir or parent.workdir
    if content.workdir:
        out.steps.append(ir.Workdir(path=content.workdir))
    if user not in {None, "root", "0"} and user is not None:
        out.steps.append(ir.User(name=user))

    tests = (*parent.tests, *(ir.Test(name=t.name, run=t.run) for t in content.smoke))
    handover = replace(
        parent,
        python=python,
        wrapper=wrapper,
        env=(*parent.env, *out.env),
        workdir=workdir,
        user=user,
        versions=versions,
        tests=tuple(dict.fromkeys(tests)),
    )
    return Planned(steps=tuple(out.steps), context=tuple(out.context), handover=handover)


def _locked_pip(  # noqa: PLR0913 - the step depends on each of them
    out: _Builder,
    *,
    content: Content,
    lock: lockfile.Lock,
    parent_lock: lockfile.Lock | None,
    python: PythonEnv,
    family: Family,
    wrapper: tuple[str, ...],
) -> None:
    """The pip step of a locked variant: what the parent's lock does not hold, hash-checked."""
    skip = parent_lock.pins() if parent_lock is not None else {}
    if all(skip.get(lockfile.normalize(p.name)) == p.version for p in lock.packages):
        return
    name = f"{content.name}.lock.txt"
    dest = f"{REQUIREMENTS_DIR}/{name}"
    out.context.append(
        ir.ContextFile(
            name=f"requirements/{name}", content=lockfile.requirements_text(lock, skip=skip)
        )
    )
    out.steps.append(ir.Copy(src=f"requirements/{name}", dest=dest))
    pip = content.components.pip
    index = ["--index-url", shlex.quote(pip.index_url)] if pip and pip.index_url else []
    from_source = pip.build_from_source if pip is not None else ()
    no_binary = [f"--no-binary={shlex.quote(p)}" for p in from_source]
    pip_cmd = _pip(
        python,
        " ".join([*index, "--no-deps", "--require-hashes", *no_binary, "-r", shlex.quote(dest)]),
    )
    commands: tuple[str, ...] = (pip_cmd,)
    if from_source and any(
        lockfile.normalize(p) not in skip for p in from_source
    ):  # a compiler only where something is built here
        comps = content.components
        interpreter = comps.python.interpreter if comps.python else "python3"
        before, after = packages.toolchain(family, interpreter)
        commands = _from_source(before, pip_cmd, after)
    out.run(f"pip requirements (locked: {lockfile.lock_name(lock.variant)})", commands, wrapper)


#: Where every image keeps what it was made from: the resolved spec and its package lists.
MANIFEST_DIR = "/.hepml"


def manifest(
    spec_json: bytes,
    family: Family,
    python: PythonEnv | None,
    wrapper: tuple[str, ...],
) -> tuple[tuple[ir.Step, ...], tuple[ir.ContextFile, ...]]:
    """Steps that write the resolved spec, the OS package list and ``pip freeze`` into the image.

    Children rewrite the same files, so an image's files describe that image.
    """
    context = ir.ContextFile(name="hepml/spec.json", content=spec_json)
    commands = [f"mkdir -p {MANIFEST_DIR}"]
    packages_file = f"{MANIFEST_DIR}/os-packages.txt"
    if family in {"debian", "ubuntu"}:
        # one "name<TAB>version" line per package, sorted by name
        commands.append(f"dpkg-query -W > {packages_file}")
    else:
        commands += [
            "rpm -qa > /tmp/hepml-rpms",
            f"sort /tmp/hepml-rpms > {packages_file}",
            "rm -f /tmp/hepml-rpms",
        ]
    if python is not None:
        freeze = f"{shlex.quote(python.python)} -m pip freeze --all"
        commands.append(f"{freeze} > {MANIFEST_DIR}/pip-freeze.txt")
    steps: tuple[ir.Step, ...] = (
        ir.Copy(src=context.name, dest=f"{MANIFEST_DIR}/spec.json"),
        ir.Run(
            title="provenance: package lists",
            commands=step_commands(tuple(commands)),
            wrapper=wrapper,
        ),
    )
    return steps, (context,)
