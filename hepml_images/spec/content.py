"""One variant's substituted spec data → checked ``Content``. Pure.

The data has passed the schema, so its shape is right; this module checks the values (package
names, versions, paths, environment, labels …) and fills in defaults that depend on the
distribution family. Problems are reported through ``report(path, message, hint)``; the caller
adds file and line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from hepml_images import lockfile
from hepml_images.spec import model, values

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

T = TypeVar("T")
_SHOWN = 3  # unhashed requirements named in the message


class Report(Protocol):
    """Where problems go."""

    def __call__(self, path: str, message: str, hint: str | None = None) -> None:
        """Record one problem at key path ``path``."""


_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


def _flag(value: Any, default: bool) -> bool:  # noqa: FBT001
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in _TRUE


class _Checker:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.failed = False

    def check(self, path: str, rule: Callable[[str], T], value: str) -> T | None:
        try:
            return rule(value)
        except values.ValueProblem as exc:
            self.report(path, exc.message, exc.hint)
            self.failed = True
            return None

    def flag(self, path: str, value: Any, *, default: bool) -> bool:
        """A boolean, or the text of one after matrix substitution (`true`, `false` …)."""
        if (
            value is not None
            and not isinstance(value, bool)
            and str(value).lower() not in _TRUE | _FALSE
        ):
            self.report(path, f"expected true or false, got {values.shown(value)}")
            self.failed = True
            return default
        return _flag(value, default)

    def many(self, path: str, rule: Callable[[str], str], items: list[str]) -> tuple[str, ...]:
        out = []
        for index, item in enumerate(items):
            checked = self.check(f"{path}[{index}]", rule, item)
            if checked is not None:
                out.append(checked)
        return tuple(out)


def default_interpreter(family: model.Family, version: str) -> str:
    """The interpreter command a distribution installs for Python ``version``."""
    if family == "el9" and version != "3.9":
        return f"python{version}"
    return "python3"


def build(  # noqa: C901
    data: Mapping[str, Any],
    *,
    family: model.Family | None,
    attachments: Mapping[str, bytes],
    report: Report,
) -> model.Content | None:
    """Check every value of one variant's data and build its ``Content`` (None on problems)."""
    c = _Checker(report)
    base: model.ImageBase | model.Bootstrap | None = None
    raw_base = data.get("base")
    if isinstance(raw_base, dict) and "bootstrap" in raw_base:
        b = raw_base["bootstrap"]
        mirror = c.check(
            "base.bootstrap.mirror",
            lambda v: values.url(v, "mirror"),
            b.get("mirror", "http://deb.debian.org/debian"),
        )
        c.check(
            "base.bootstrap.distro",
            lambda v: values.choice(v, "distro", ("debian",)),
            b.get("distro", "debian"),
        )
        base = model.Bootstrap(
            distro="debian",
            suite=c.check("base.bootstrap.suite", values.suite, b["suite"]) or "",
            variant=c.check(
                "base.bootstrap.variant",
                lambda v: values.choice(v, "variant", ("minbase", "buildd", "standard")),
                b.get("variant", "minbase"),
            )
            or "minbase",
            mirror=mirror or "",
            components=c.many(
                "base.bootstrap.components",
                lambda v: values.word(v, "component"),
                b.get("components", ["main"]),
            ),
            packages=c.many(
                "base.bootstrap.packages",
                lambda v: values.package(v, "debian"),
                b.get("packages", []),
            ),
        )
        family = "debian"
    elif isinstance(raw_base, dict):
        fam = cast("model.Family", raw_base["family"])
        if fam not in {"el7", "el9", "debian", "ubuntu"}:
            report(
                "base.family", f"expected one of el7, el9, debian, ubuntu; got {values.shown(fam)}"
            )
            return None
        release = raw_base.get("release")
        base = model.ImageBase(
            image=c.check("base.image", values.image_ref, raw_base["image"]) or "",
            digest=c.check("base.digest", values.image_digest, raw_base["digest"])
            if raw_base.get("digest") is not None
            else None,
            family=fam,
            release=c.check("base.release", lambda v: values.word(v, "release"), release)
            if release
            else None,
        )
        family = fam
    if family is None:  # the parent failed; its problems are reported already
        return None

    comps = {
        name: options
        for name, options in (data.get("components") or {}).items()
        if c.flag(f"components.{name}.enabled", (options or {}).get("enabled"), default=True)
    }
    system_packages = None
    if "system-packages" in comps:
        system_packages = model.SystemPackages(
            packages=c.many(
                "components.system-packages.packages",
                lambda v: values.package(v, family),
                comps["system-packages"]["packages"],
            )
        )
    hdf5 = None
    if "hdf5" in comps:
        raw = comps["hdf5"] or {}
        version = raw.get("version")
        hdf5 = model.Hdf5(
            version=c.check(
                "components.hdf5.version", lambda v: values.release(v, "HDF5 version"), version
            )
            if version
            else None
        )
    python = None
    if "python" in comps:
        raw = comps["python"]
        version = (
            c.check(
                "components.python.version",
                lambda v: values.major_minor(v, "Python version"),
                raw["version"],
            )
            or "3"
        )
        source = cast(
            "Literal['system', 'existing']",
            c.check(
                "components.python.source",
                lambda v: values.choice(v, "source", ("system", "existing")),
                raw.get("source", "system"),
            )
            or "system",
        )
        interpreter = raw.get("interpreter") or default_interpreter(family, version)
        if not interpreter.startswith("/"):
            interpreter = (
                c.check(
                    "components.python.interpreter",
                    lambda v: values.word(v, "interpreter"),
                    interpreter,
                )
                or "python3"
            )
        else:
            interpreter = (
                c.check(
                    "components.python.interpreter",
                    lambda v: values.abs_path(v, "interpreter"),
                    interpreter,
                )
                or "python3"
            )
        python = model.Python(
            version=version,
            source=source,
            interpreter=interpreter,
            venv=c.check(
                "components.python.venv",
                lambda v: values.abs_path(v, "venv"),
                raw.get("venv", "/opt/venv"),
            )
            or "/opt/venv",
            system_site_packages=c.flag(
                "components.python.system-site-packages",
                raw.get("system-site-packages"),
                default=False,
            ),
        )
    pip = None
    if "pip" in comps:
        raw = comps["pip"] or {}
        file = raw.get("file")
        require_hashes = c.flag(
            "components.pip.require-hashes", raw.get("require-hashes"), default=False
        )
        reqs = c.many(
            "components.pip.requirements", values.requirement, raw.get("requirements", [])
        )
        content = attachments.get(file) if file else None
        pylock = file is not None and lockfile.is_pylock_name(file)
        if pylock and content is not None:
            # a PEP 751 lock is hash-locked by definition: installed like one
            require_hashes = True
            try:
                lockfile.read_pylock(content)
            except lockfile.LockProblem as exc:
                report("components.pip.file", f"{file}: {exc.message}")
                c.failed = True
        if not file and not raw.get("requirements"):
            report("components.pip", "pip needs `requirements:` or `file:`")
            c.failed = True
        if require_hashes and not file:
            report(
                "components.pip.require-hashes",
                "require-hashes needs a hash-locked requirements `file:`",
                "lock one with `uv pip compile --generate-hashes`",
            )
            c.failed = True
        if require_hashes and reqs:
            report(
                "components.pip.requirements",
                "inline requirements cannot be combined with require-hashes",
                "put every requirement, with hashes, in the lock file",
            )
            c.failed = True
        if require_hashes and content is not None and not pylock:
            unhashed, refused = _unhashed_requirements(content)
            if refused:
                line_number, option = refused[0]
                report(
                    "components.pip.file",
                    f"{file} line {line_number}: {option} cannot be used with require-hashes"
                    + (f" ({len(refused) - 1} more such lines)" if len(refused) > 1 else ""),
                    "a hash-locked file lists every requirement with its hashes; editable"
                    " installs (-e) cannot be hashed, and other files (-r, -c) are not copied",
                )
                c.failed = True
            if unhashed:
                report(
                    "components.pip.file",
                    f"{file} is not hash-locked: no --hash for {', '.join(unhashed[:_SHOWN])}"
                    + (" …" if len(unhashed) > _SHOWN else ""),
                    "lock it with `uv pip compile --generate-hashes`"
                    " or `pip-compile --generate-hashes`",
                )
                c.failed = True
        index_url = raw.get("index-url")
        pip = model.Pip(
            requirements=reqs,
            file=file,
            file_content=content,
            require_hashes=require_hashes,
            index_url=c.check(
                "components.pip.index-url", lambda v: values.url(v, "index-url"), index_url
            )
            if index_url is not None
            else None,
            build_from_source=c.many(
                "components.pip.build-from-source",
                values.project_name,
                raw.get("build-from-source", []),
            ),
        )
    tensorflow = None
    if "tensorflow" in comps:
        raw = comps["tensorflow"]
        tensorflow = model.Tensorflow(
            version=c.check(
                "components.tensorflow.version",
                lambda v: values.release(v, "TensorFlow version"),
                raw["version"],
            )
            or "0",
            accelerator=raw["accelerator"],
        )
        if raw["accelerator"] not in {"cpu", "cuda"}:
            report(
                "components.tensorflow.accelerator",
                f"expected cpu or cuda, got {values.shown(raw['accelerator'])}",
            )
            c.failed = True
    cuda = None
    if "cuda" in comps:
        raw = comps["cuda"]
        cudnn = raw.get("cudnn")
        cuda = model.Cuda(
            version=c.check(
                "components.cuda.version",
                lambda v: values.major_minor(v, "CUDA version"),
                raw["version"],
            )
            or "0.0",
            cudnn=c.check(
                "components.cuda.cudnn", lambda v: values.major_minor(v, "cuDNN version"), cudnn
            )
            if cudnn
            else None,
            source=cast(
                "Literal['pip', 'system', 'image']",
                c.check(
                    "components.cuda.source",
                    lambda v: values.choice(v, "source", ("pip", "system", "image")),
                    raw.get("source", "system"),
                )
                or "system",
            ),
        )
    analysisbase = None
    if "analysisbase" in comps:
        raw = comps["analysisbase"]
        analysisbase = model.AnalysisBase(
            release=c.check(
                "components.analysisbase.release",
                lambda v: values.release(v, "AnalysisBase release"),
                raw["release"],
            )
            or "0",
            setup=c.check(
                "components.analysisbase.setup",
                lambda v: values.abs_path(v, "setup"),
                raw.get("setup", "/release_setup.sh"),
            )
            or "/",
        )

    env = []
    for key, value in sorted((data.get("env") or {}).items()):
        name = c.check(f"env.{key}", values.env_name, key)
        checked = c.check(f"env.{key}", values.env_value, value)
        if name is not None and checked is not None:
            env.append((name, checked))
    labels = []
    for key, value in sorted((data.get("labels") or {}).items()):
        name = c.check(f"labels.{key}", values.label_key, key)
        checked = c.check(f"labels.{key}", values.label_value, value)
        if name is not None and checked is not None:
            labels.append((name, checked))
    files = []
    for index, item in enumerate(data.get("files") or []):
        dest = c.check(f"files[{index}].dest", lambda v: values.abs_path(v, "dest"), item["dest"])
        mode = (
            c.check(f"files[{index}].mode", values.file_mode, item["mode"])
            if item.get("mode") is not None
            else None
        )
        if dest is not None and item["src"] in attachments:
            files.append(
                model.FileCopy(
                    src=item["src"], dest=dest, mode=mode, content=attachments[item["src"]]
                )
            )
    smoke = []
    for index, item in enumerate(data.get("smoke") or []):
        run = item if isinstance(item, str) else item["run"]
        name = item.get("name", run) if isinstance(item, dict) else run
        checked = c.check(f"smoke[{index}]", values.smoke_command, run)
        if checked is not None:
            smoke.append(model.SmokeTest(name=name, run=checked))
    workdir = data.get("workdir")
    user = data.get("user")
    publish = data.get("publish") or {}
    singularity = data.get("singularity") or {}
    gpu = cast(
        "model.GpuCheck",
        c.check(
            "gpu.check",
            lambda v: values.choice(v, "gpu.check", ("required", "auto", "none")),
            (data.get("gpu") or {}).get("check", "auto"),
        )
        or "auto",
    )
    version = c.check("version", values.spec_version, data.get("version", "0.1.0")) or "0.1.0"
    result = model.Content(
        name=data["name"],
        description=c.check(
            "description",
            lambda v: values.one_line(v, "description"),
            str(data.get("description", "")).strip(),
        )
        or "",
        version=version,
        extends=data.get("extends"),
        base=base,
        components=model.Components(
            system_packages=system_packages,
            hdf5=hdf5,
            python=python,
            pip=pip,
            tensorflow=tensorflow,
            cuda=cuda,
            analysisbase=analysisbase,
        ),
        env=tuple(env),
        files=tuple(files),
        workdir=c.check("workdir", lambda v: values.abs_path(v, "workdir"), workdir)
        if workdir is not None
        else None,
        user=c.check("user", lambda v: values.word(v, "user"), user) if user is not None else None,
        entrypoint=c.many(
            "entrypoint", lambda v: values.one_line(v, "an exec-form argument"), data["entrypoint"]
        )
        if data.get("entrypoint") is not None
        else None,
        cmd=c.many("cmd", lambda v: values.one_line(v, "an exec-form argument"), data["cmd"])
        if data.get("cmd") is not None
        else None,
        labels=tuple(labels),
        tags=tuple(data.get("tags") or ()),
        smoke=tuple(smoke),
        gpu=gpu,
        publish=model.Publish(
            repositories=c.many(
                "publish.repositories", values.repository, publish.get("repositories", [])
            ),
            tags=tuple(publish.get("tags", ())),
            immutable=tuple(publish.get("immutable", ())),
        ),
        singularity=model.Singularity(
            sif=c.flag("singularity.sif", singularity.get("sif"), default=True),
            sandbox=c.flag("singularity.sandbox", singularity.get("sandbox"), default=False),
        ),
    )
    return None if c.failed else result


#: Options that a hash-locked requirements file must not hold: an editable install cannot be
#: hashed, and a nested requirements or constraints file is not part of the build context.
_REFUSED_OPTIONS = ("-e", "--editable", "-r", "--requirement", "-c", "--constraint")
_COMMENT = re.compile(r"(?:^|\s)#.*$")


def _logical_lines(content: bytes) -> list[tuple[int, str]]:
    """(first line number, text without comment) of each logical line, as pip reads the file.

    CRLF and CR line ends are line ends; a trailing backslash joins the next line; a comment
    starts at ``#`` at the start of a line or after whitespace (``--hash=sha256:…#x`` is no
    comment, ``# --hash=…`` is one).
    """
    text = content.decode("utf-8", errors="replace")
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        out.append((start, " ".join(pending).strip()))
        pending = []
    if pending:
        out.append((start, " ".join(pending).strip()))
    return out


def _unhashed_requirements(content: bytes) -> tuple[list[str], list[tuple[int, str]]]:
    """Requirements of a requirements file without ``--hash``, and the options it must not use."""
    missing: list[str] = []
    refused: list[tuple[int, str]] = []
    for number, line in _logical_lines(content):
        if not line:
            continue
        first = line.split()[0]
        option = first.split("=", 1)[0]
        if option in _REFUSED_OPTIONS or first[:2] in _REFUSED_OPTIONS:  # also -rfile.txt
            refused.append((number, option if option in _REFUSED_OPTIONS else first[:2]))
            continue
        if first.startswith("-"):
            continue
        if not any(word.startswith("--hash=") or word == "--hash" for word in line.split()):
            missing.append(values.shown(first) if len(first) > values.SHOWN_CHARS else first)
    return missing, refused
