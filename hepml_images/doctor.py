"""What this machine has for building, testing and publishing images: ``hepml-images doctor``.

Two halves. The probes (``probe_*`` and ``gather``) touch the machine: the Docker Engine (through
``hepml_images.engine``), ``PATH``, ``nvidia-smi`` and ``/proc``, the Docker client configuration;
they return frozen records of plain facts and never raise for a missing thing. ``evaluate`` is pure:
it turns those records into one ``Check`` per name in ``CHECK_NAMES`` with a status, a detail line,
a hint when the status is not ok, and JSON-able data; unit tests feed it fake records.

Secrets stay inside the credentials probe: it returns registry names and where their credentials
come from (the config file, a credential helper, the environment), never a user name, a password,
a token or an ``auth`` value, so nothing downstream can print one.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepml_images import engine
from hepml_images.engine import buildkit
from hepml_images.engine.buildkit import BUILDER_ENV
from hepml_images.errors import UsageError
from hepml_images.registry import PASSWORD_ENV, USER_ENV, docker_config_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence


class Status(str, Enum):
    """How a check came out."""

    ok = "ok"
    missing = "missing"
    warning = "warning"


CHECK_NAMES: tuple[str, ...] = (
    "engine",
    "nvidia-runtime",
    "gpu",
    "apptainer",
    "siftool",
    "mksquashfs",
    "mmdebstrap",
    "skopeo",
    "credentials",
)
"""Every check, in the order reported; ``--require`` takes these names."""

ALWAYS_REQUIRED: frozenset[str] = frozenset({"engine"})
"""Checks that fail ``doctor`` whatever ``--require`` says: nothing builds without an engine."""

DEFAULT_DOCKER_HOST = engine.DEFAULT_HOST

# The tools looked up on PATH, with the arguments that print their version cheaply. The first
# name found wins (apptainer was singularity before it joined the Linux Foundation).
TOOL_VERSION_ARGS: Mapping[str, tuple[str, ...]] = {
    "apptainer": ("--version",),
    "singularity": ("--version",),
    "siftool": ("version",),
    "mksquashfs": ("-version",),
    "tar2sqfs": ("--version",),
    "mmdebstrap": ("--version",),
    "skopeo": ("--version",),
}
NVIDIA_TOOLKIT_BINARIES = (
    "nvidia-container-runtime",
    "nvidia-container-runtime-hook",
    "nvidia-container-cli",
)
CDI_DIRS = engine.CDI_DIRS
NVIDIA_CDI_KIND = engine.NVIDIA_CDI_KIND
PROC_DRIVER = Path("/proc/driver/nvidia")
PROBE_TIMEOUT_S = 10


# --- the probes' records ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EngineProbe:
    """The Docker Engine as the SDK sees it (``host`` is ``DOCKER_HOST`` or the default socket)."""

    host: str
    host_from_env: bool = False
    reachable: bool
    server_version: str | None = None
    api_version: str | None = None
    runtimes: tuple[str, ...] | None = None
    default_runtime: str | None = None
    #: ``Docker Engine`` or ``Podman``
    flavour: str | None = None
    #: ``containerd`` (the containerd image store) or the graph driver (``overlay2`` …)
    store: str | None = None
    #: how GPU checks ask for GPUs: ``cdi`` or ``gpu`` (the NVIDIA runtime's capability)
    gpu_request: str | None = None
    #: the build backend ``build`` uses, and what else was found
    builder: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class NvidiaToolkitProbe:
    """The NVIDIA container toolkit's binaries on PATH and CDI specs that name NVIDIA GPUs."""

    binaries: Mapping[str, str] = field(default_factory=dict)
    cdi_specs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Gpu:
    """One GPU as ``nvidia-smi`` (or ``/proc``) lists it; ``memory`` as printed, e.g. 81559 MiB."""

    index: str
    name: str
    driver_version: str | None = None
    memory: str | None = None


@dataclass(frozen=True, kw_only=True)
class GpuProbe:
    """GPUs and the NVIDIA driver; ``source`` says where the facts came from (None: nowhere)."""

    source: str | None = None
    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    nvidia_smi: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ToolProbe:
    """A command on PATH: where it is and its version when it printed one."""

    name: str
    path: str | None = None
    version: str | None = None


@dataclass(frozen=True, kw_only=True)
class Credential:
    """Where the credentials for one registry come from; ``registry`` is None for the env pair."""

    registry: str | None
    source: str  # "config", "helper" or "env"
    helper: str | None = None


@dataclass(frozen=True, kw_only=True)
class CredentialsProbe:
    """Registries with credentials; ``problems`` are things worth a warning (never secrets)."""

    config_path: str
    config_found: bool = False
    credentials: tuple[Credential, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Probes:
    """Everything the probes found: the whole input of ``evaluate``."""

    engine: EngineProbe
    nvidia: NvidiaToolkitProbe
    gpu: GpuProbe
    tools: Mapping[str, ToolProbe]
    credentials: CredentialsProbe


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    hint: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the status is ok."""
        return self.status is Status.ok

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON object."""
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "hint": self.hint,
            "data": dict(self.data),
        }


@dataclass(frozen=True, kw_only=True)
class Report:
    """Every check, and which of them must be ok for the machine to pass."""

    checks: tuple[Check, ...]
    required: frozenset[str] = ALWAYS_REQUIRED

    @property
    def failed(self) -> tuple[Check, ...]:
        """The required checks that are not ok."""
        return tuple(c for c in self.checks if c.name in self.required and not c.ok)

    @property
    def ok(self) -> bool:
        """Whether every required check is ok."""
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when every required check is ok, else 1."""
        return 0 if self.ok else 1

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object: ``ok``, ``required`` and ``checks``."""
        return {
            "ok": self.ok,
            "required": sorted(self.required),
            "checks": [c.to_json() for c in self.checks],
        }


def required_checks(names: Iterable[str]) -> frozenset[str]:
    """The checks that must pass: ``engine`` and the valid ``--require`` names; else UsageError."""
    names = list(names)
    unknown = sorted({n for n in names if n not in CHECK_NAMES})
    if unknown:
        close = [
            m for n in unknown for m in difflib.get_close_matches(n, CHECK_NAMES, n=1, cutoff=0.75)
        ]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"unknown check(s) for --require: {', '.join(unknown)}",
            hint=f"{hint}valid names: {', '.join(CHECK_NAMES)}",
        )
    return ALWAYS_REQUIRED | frozenset(names)


def evaluate(probes: Probes, required: Iterable[str] = ()) -> Report:
    """The report for what the probes found (pure); ``required`` as from ``required_checks``."""
    checks = (
        _engine_check(probes.engine),
        _nvidia_runtime_check(probes.engine, probes.nvidia),
        _gpu_check(probes.gpu),
        _apptainer_check(probes.tools),
        _tool_check(
            probes.tools,
            "siftool",
            "install siftool (Debian: apt-get install siftool) to write SIF files",
        ),
        _squashfs_check(probes.tools),
        _tool_check(
            probes.tools,
            "mmdebstrap",
            "install mmdebstrap (apt-get install mmdebstrap): the Debian ladder's base is"
            " bootstrapped with it",
        ),
        _tool_check(
            probes.tools,
            "skopeo",
            "install skopeo (apt-get install skopeo) to copy images between registries",
        ),
        _credentials_check(probes.credentials),
    )
    return Report(checks=checks, required=ALWAYS_REQUIRED | frozenset(required))


def _engine_hint(engine: EngineProbe) -> str:
    error = (engine.error or "").lower()
    if "permission denied" in error:
        return (
            "the socket is there but this user may not use it: add the user to the docker group"
            " (sudo usermod -aG docker $USER, then log in again) or run as root"
        )
    if engine.host_from_env:
        return f"DOCKER_HOST is {engine.host}: start the engine there, or fix or unset DOCKER_HOST"
    if "no such file" in error or "connection refused" in error:
        return (
            "start the Docker Engine (sudo systemctl start docker, or run dockerd;"
            " scripts/setup-host.sh installs and starts it), or point DOCKER_HOST at a running"
            " engine (the Python SDK does not follow `docker context`)"
        )
    return (
        "check that dockerd is running and answers on its socket, or set DOCKER_HOST"
        " (the Python SDK does not follow `docker context`)"
    )


def _engine_check(engine: EngineProbe) -> Check:
    data: dict[str, Any] = {
        "host": engine.host,
        "reachable": engine.reachable,
        "server_version": engine.server_version,
        "api_version": engine.api_version,
        "flavour": engine.flavour,
        "store": engine.store,
        "gpu_request": engine.gpu_request,
        "builder": engine.builder,
    }
    if not engine.reachable:
        data["error"] = engine.error
        return Check(
            name="engine",
            status=Status.missing,
            detail=f"no Docker Engine answers at {engine.host}: {engine.error or 'no answer'}",
            hint=_engine_hint(engine),
            data=data,
        )
    return Check(
        name="engine",
        status=Status.ok,
        detail=(
            f"{engine.flavour or 'Docker Engine'} {engine.server_version or '?'}"
            f" (API {engine.api_version or '?'}) at {engine.host}; image store"
            f" {engine.store or '?'}; GPUs requested through"
            f" {'CDI' if engine.gpu_request == 'cdi' else 'the gpu capability'}; build backend"
            f" {engine.builder or '?'}"
        ),
        data=data,
    )


def _major(version: str | None) -> int | None:
    match = re.match(r"\d+", version or "")
    return int(match.group()) if match else None


def _nvidia_runtime_check(engine: EngineProbe, nvidia: NvidiaToolkitProbe) -> Check:
    runtimes = engine.runtimes
    data: dict[str, Any] = {
        "engine_runtimes": None if runtimes is None else list(runtimes),
        "default_runtime": engine.default_runtime,
        "toolkit": dict(sorted(nvidia.binaries.items())),
        "cdi_specs": list(nvidia.cdi_specs),
    }
    known = (
        "the engine's runtimes are unknown"
        if runtimes is None
        else f"engine runtimes: {', '.join(runtimes) or 'none'}"
    )
    toolkit = ", ".join(sorted(nvidia.binaries))
    if runtimes is not None and "nvidia" in runtimes:
        detail = "runtime `nvidia` registered with the engine"
        if nvidia.binaries:
            detail += f"; toolkit: {toolkit}"
        return Check(name="nvidia-runtime", status=Status.ok, detail=detail, data=data)
    if nvidia.binaries:
        return Check(
            name="nvidia-runtime",
            status=Status.ok,
            detail=f"nvidia-container-toolkit on PATH ({toolkit}) for `docker run --gpus`; {known}",
            data=data,
        )
    if nvidia.cdi_specs:
        detail = f"CDI spec(s) for {NVIDIA_CDI_KIND}: {', '.join(nvidia.cdi_specs)}; {known}"
        major = _major(engine.server_version)
        if major is not None and major >= 25:  # noqa: PLR2004 - Docker Engine 25 added CDI
            return Check(name="nvidia-runtime", status=Status.ok, detail=detail, data=data)
        return Check(
            name="nvidia-runtime",
            status=Status.warning,
            detail=detail,
            hint=(
                "the Docker Engine uses CDI devices from version 25 with the `cdi` feature"
                " enabled; or install nvidia-container-toolkit and run"
                " `nvidia-ctk runtime configure --runtime=docker`"
            ),
            data=data,
        )
    return Check(
        name="nvidia-runtime",
        status=Status.missing,
        detail=(
            f"no NVIDIA container runtime: {known}; nvidia-container-toolkit not on PATH;"
            f" no CDI spec for {NVIDIA_CDI_KIND} in {' or '.join(CDI_DIRS)}"
        ),
        hint=(
            "needed only to test CUDA images on a GPU: install nvidia-container-toolkit, then"
            " `sudo nvidia-ctk runtime configure --runtime=docker` and restart dockerd"
        ),
        data=data,
    )


def _gpu_check(gpu: GpuProbe) -> Check:
    data: dict[str, Any] = {
        "source": gpu.source,
        "driver_version": gpu.driver_version,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "driver_version": g.driver_version,
                "memory_total": g.memory,
            }
            for g in gpu.gpus
        ],
    }
    if gpu.error is not None:
        data["error"] = gpu.error
    driver = f"driver {gpu.driver_version}" if gpu.driver_version else "driver version unknown"
    if gpu.gpus:
        names = "; ".join(
            f"{g.index}: {g.name}" + (f" ({g.memory})" if g.memory else "") for g in gpu.gpus
        )
        return Check(
            name="gpu",
            status=Status.ok,
            detail=f"{len(gpu.gpus)} NVIDIA GPU(s), {driver} — {names}",
            data=data,
        )
    if gpu.driver_version is not None:
        return Check(
            name="gpu",
            status=Status.warning,
            detail=f"NVIDIA {driver} loaded, but no GPU could be listed"
            + (f": {gpu.error}" if gpu.error else ""),
            hint="check `nvidia-smi`; install the driver's utilities if it is missing",
            data=data,
        )
    if gpu.error is not None:
        return Check(
            name="gpu",
            status=Status.missing,
            detail=f"no NVIDIA GPU usable: {gpu.error}",
            hint="nvidia-smi is installed but failed: check the NVIDIA kernel driver is loaded",
            data=data,
        )
    return Check(
        name="gpu",
        status=Status.missing,
        detail="no NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia)",
        hint="CUDA images build without a GPU; their GPU checks need an NVIDIA GPU and driver",
        data=data,
    )


def _tool_data(tool: ToolProbe | None) -> dict[str, Any]:
    if tool is None:
        return {"path": None, "version": None}
    return {"path": tool.path, "version": tool.version}


def _found(tool: ToolProbe) -> str:
    version = f" ({tool.version})" if tool.version else ""
    return f"{tool.path}{version}"


def _tool_check(tools: Mapping[str, ToolProbe], name: str, hint: str) -> Check:
    tool = tools.get(name)
    data = _tool_data(tool)
    if tool is None or tool.path is None:
        return Check(
            name=name, status=Status.missing, detail=f"{name} not on PATH", hint=hint, data=data
        )
    return Check(name=name, status=Status.ok, detail=_found(tool), data=data)


def _apptainer_check(tools: Mapping[str, ToolProbe]) -> Check:
    for name in ("apptainer", "singularity"):
        tool = tools.get(name)
        if tool is not None and tool.path is not None:
            data = {"command": name, **_tool_data(tool)}
            return Check(name="apptainer", status=Status.ok, detail=_found(tool), data=data)
    return Check(
        name="apptainer",
        status=Status.missing,
        detail="neither apptainer nor singularity on PATH",
        hint=(
            "optional: SIFs are made natively and smoke-tested on the engine without it; with"
            " Apptainer (>= 1.4 proven) the SIF's checks run through `apptainer exec --cleanenv`,"
            " as on a grid site (https://apptainer.org/docs/admin/main/installation.html)"
        ),
        data={"command": None, "path": None, "version": None},
    )


def _squashfs_check(tools: Mapping[str, ToolProbe]) -> Check:
    mksquashfs, tar2sqfs = tools.get("mksquashfs"), tools.get("tar2sqfs")
    data = {**_tool_data(mksquashfs), "tar2sqfs": _tool_data(tar2sqfs)}
    if mksquashfs is None or mksquashfs.path is None:
        return Check(
            name="mksquashfs",
            status=Status.missing,
            detail="mksquashfs not on PATH",
            hint="install squashfs-tools (apt-get install squashfs-tools) to write SIF files",
            data=data,
        )
    if tar2sqfs is None or tar2sqfs.path is None:
        return Check(
            name="mksquashfs",
            status=Status.warning,
            detail=f"{_found(mksquashfs)}; tar2sqfs not on PATH",
            hint="install squashfs-tools-ng (apt-get install squashfs-tools-ng) for tar2sqfs",
            data=data,
        )
    return Check(
        name="mksquashfs",
        status=Status.ok,
        detail=f"{_found(mksquashfs)}; tar2sqfs {_found(tar2sqfs)}",
        data=data,
    )


def _credentials_check(probe: CredentialsProbe) -> Check:
    data: dict[str, Any] = {
        "config": probe.config_path,
        "config_found": probe.config_found,
        "registries": [
            {"registry": c.registry, "source": c.source, "helper": c.helper}
            for c in probe.credentials
        ],
    }
    shown = []
    for cred in probe.credentials:
        if cred.source == "env":
            shown.append(f"{USER_ENV}/{PASSWORD_ENV} (env)")
        elif cred.registry is None:
            shown.append(f"credential store {cred.helper} (its registries are not listed)")
        elif cred.helper is not None:
            shown.append(f"{cred.registry} (helper {cred.helper})")
        else:
            shown.append(f"{cred.registry} ({cred.source})")
    login = (
        f"`docker login REGISTRY`, or set {USER_ENV} and {PASSWORD_ENV},"
        " before publishing to a registry that needs a login"
    )
    if probe.problems:
        detail = "; ".join([*shown, *probe.problems])
        return Check(
            name="credentials", status=Status.warning, detail=detail, hint=login, data=data
        )
    if not shown:
        where = probe.config_path if probe.config_found else f"{probe.config_path} (absent)"
        return Check(
            name="credentials",
            status=Status.warning,
            detail=f"no registry credentials in {where} or the environment",
            hint=login,
            data=data,
        )
    return Check(name="credentials", status=Status.ok, detail=", ".join(shown), data=data)


# --- parsers (pure) ---------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,driver_version,memory.total`` CSV lines."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():  # noqa: PLR2004 - the four columns
            continue
        index, memory, driver = fields[0], fields[-1], fields[-2]
        name = ", ".join(fields[1:-2])  # a name with a comma in it stays whole
        gpus.append(Gpu(index=index, name=name, driver_version=driver, memory=memory))
    return tuple(gpus)


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` (proprietary or open module)."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            if match:
                return match.group(1)
    return None


def parse_proc_gpu_model(text: str) -> str | None:
    """The model from ``/proc/driver/nvidia/gpus/<PCI bus id>/information``."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model" and value.strip():
            return value.strip()
    return None


def parse_tool_version(name: str, text: str) -> str | None:
    """The version a tool printed, as one short line; None when it printed none."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if name == "siftool":  # prints "Version:  unknown" when built without one
            match = re.match(r"Version:\s*(\S+)", line)
            if match and match.group(1) != "unknown":
                return match.group(1)
            continue
        return line[:120]
    return None


def credentials_from_config(
    config: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[tuple[Credential, ...], tuple[str, ...]]:
    """Registries with credentials in a parsed Docker config and in ``env``, and problems.

    Only keys and helper names are read: the values of ``auths`` entries (``auth``,
    ``identitytoken``, passwords) are never looked at beyond their presence.
    """
    creds: dict[str, Credential] = {}
    problems: list[str] = []
    store = config.get("credsStore")
    store = store if isinstance(store, str) and store else None
    auths = config.get("auths")
    if isinstance(auths, dict):
        for registry, entry in auths.items():
            if not isinstance(registry, str):
                continue
            if isinstance(entry, dict) and entry:
                creds[registry] = Credential(registry=registry, source="config")
            elif store is not None:  # an empty entry: the secret is in the credential store
                creds[registry] = Credential(registry=registry, source="helper", helper=store)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for registry, helper in helpers.items():
            if isinstance(registry, str) and isinstance(helper, str):
                creds[registry] = Credential(registry=registry, source="helper", helper=helper)
    found = list(creds.values())
    if store is not None and not found:
        found.append(Credential(registry=None, source="helper", helper=store))
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user and password:
        found.append(Credential(registry=None, source="env"))
    elif user or password:
        given, absent = (USER_ENV, PASSWORD_ENV) if user else (PASSWORD_ENV, USER_ENV)
        problems.append(f"{given} is set but {absent} is not")
    found.sort(key=lambda c: (c.source == "env", c.registry or "", c.helper or ""))
    return tuple(found), tuple(problems)


# --- the probes (side effects) ----------------------------------------------------------------


def probe_engine(timeout: int = PROBE_TIMEOUT_S) -> EngineProbe:
    """Ask the Docker Engine for its version and runtimes; an unreachable engine is a result."""
    from_env = os.environ.get("DOCKER_HOST")
    host = from_env or DEFAULT_DOCKER_HOST
    answer = engine.query(timeout)
    if isinstance(answer, str):
        return EngineProbe(host=host, host_from_env=bool(from_env), reachable=False, error=answer)
    version, info = answer
    runtimes = info.get("Runtimes")
    return EngineProbe(
        host=host,
        host_from_env=bool(from_env),
        reachable=True,
        server_version=_str_or_none(version.get("Version")),
        api_version=_str_or_none(version.get("ApiVersion")),
        runtimes=tuple(sorted(runtimes)) if isinstance(runtimes, dict) else None,
        default_runtime=_str_or_none(info.get("DefaultRuntime")),
        flavour=engine.flavour(version),
        store=engine.image_store(info),
        gpu_request=engine.gpu_request(info, engine.cdi_specs(info.get("CDISpecDirs") or [])),
        builder=_builder(version, engine.flavour(version)),
    )


def _builder(version: Mapping[str, Any], flavour: str) -> str:
    """The backend ``build`` uses here (with ``HEPML_BUILDER``, default auto), and why."""
    requested = os.environ.get(BUILDER_ENV) or "auto"
    try:
        chosen = buildkit.choose(requested, version, flavour)
    except UsageError as exc:
        return f"none: {exc.message}"
    return f"{chosen.label}: {chosen.reason}"


def probe_nvidia_toolkit(cdi_dirs: Sequence[str] = CDI_DIRS) -> NvidiaToolkitProbe:
    """The toolkit's binaries on PATH and the CDI spec files that declare NVIDIA GPUs."""
    binaries = {name: path for name in NVIDIA_TOOLKIT_BINARIES if (path := shutil.which(name))}
    return NvidiaToolkitProbe(binaries=binaries, cdi_specs=engine.cdi_specs(cdi_dirs))


def probe_gpu(proc: Path = PROC_DRIVER) -> GpuProbe:
    """GPUs from ``nvidia-smi`` when it is on PATH, else driver and GPUs from ``/proc``.

    Without nvidia-smi a GPU's ``index`` is its PCI bus id, the name of its ``/proc`` folder.
    """
    smi = shutil.which("nvidia-smi")
    error = None
    if smi is not None:
        query = "--query-gpu=index,name,driver_version,memory.total"
        ran = _run([smi, query, "--format=csv,noheader"])
        if isinstance(ran, str):
            gpus = parse_nvidia_smi(ran)
            if gpus:
                return GpuProbe(
                    source="nvidia-smi",
                    gpus=gpus,
                    driver_version=gpus[0].driver_version,
                    nvidia_smi=smi,
                )
            error = "nvidia-smi listed no GPU"
        else:
            error = ran.error
    try:
        text = (proc / "version").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return GpuProbe(nvidia_smi=smi, error=error)
    driver = parse_proc_driver_version(text)
    listed = []
    if smi is None:  # nvidia-smi failing says more about the GPUs than /proc listing them
        with contextlib.suppress(OSError):
            for device in sorted((proc / "gpus").iterdir()):
                info = (device / "information").read_text(encoding="utf-8", errors="replace")
                model = parse_proc_gpu_model(info)
                if model is not None:
                    listed.append(Gpu(index=device.name, name=model, driver_version=driver))
    return GpuProbe(
        source=str(proc),
        gpus=tuple(listed),
        driver_version=driver,
        nvidia_smi=smi,
        error=error or "nvidia-smi not on PATH",
    )


def probe_tools(names: Iterable[str] = TOOL_VERSION_ARGS) -> dict[str, ToolProbe]:
    """Each tool's path on PATH and its version line (from a short, time-limited run)."""
    tools = {}
    for name in names:
        path = shutil.which(name)
        version = None
        if path is not None:
            ran = _run([path, *TOOL_VERSION_ARGS.get(name, ("--version",))], merge_stderr=True)
            if isinstance(ran, str):
                version = parse_tool_version(name, ran)
        tools[name] = ToolProbe(name=name, path=path, version=version)
    return tools


def probe_credentials(env: Mapping[str, str] | None = None) -> CredentialsProbe:
    """Registries with credentials in the Docker config and the environment (no secrets)."""
    env = os.environ if env is None else env
    path = docker_config_path(env)
    config: Any = {}
    problems: list[str] = []
    found = path.is_file()
    if found:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:  # the message has a position, never the content
            problems.append(f"{path} is not valid JSON (line {exc.lineno})")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path} cannot be read: {type(exc).__name__}")
    if not isinstance(config, dict):
        problems.append(f"{path} is not a JSON object")
        config = {}
    creds, more = credentials_from_config(config, env)
    helpers = sorted({c.helper for c in creds if c.helper is not None})
    problems += [
        f"credential helper docker-credential-{h} not on PATH"
        for h in helpers
        if shutil.which(f"docker-credential-{h}") is None
    ]
    return CredentialsProbe(
        config_path=str(path),
        config_found=found,
        credentials=creds,
        problems=(*problems, *more),
    )


def gather() -> Probes:
    """Run every probe on this machine."""
    return Probes(
        engine=probe_engine(),
        nvidia=probe_nvidia_toolkit(),
        gpu=probe_gpu(),
        tools=probe_tools(),
        credentials=probe_credentials(),
    )


@dataclass(frozen=True)
class _Failed:
    error: str


def _run(argv: list[str], *, merge_stderr: bool = False) -> str | _Failed:
    """Stdout of a short command, or why it failed; never raises."""
    try:
        done = subprocess.run(  # noqa: S603 - argv[0] is a full path from shutil.which
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _Failed(f"{Path(argv[0]).name} did not answer in {PROBE_TIMEOUT_S} s")
    except OSError as exc:
        return _Failed(f"{Path(argv[0]).name}: {exc.strerror or exc}")
    if done.returncode != 0 and not merge_stderr:
        said = (done.stderr or done.stdout or "").strip().splitlines()
        why = said[0] if said else f"exit status {done.returncode}"
        return _Failed(f"{Path(argv[0]).name} failed: {why}")
    return done.stdout


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
