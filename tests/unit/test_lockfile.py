"""Lock files: format, staleness, rendering from a lock, key versions (no network, no engine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hepml_images import lockfile, locking, resolve
from hepml_images.components import TensorflowInstall
from hepml_images.errors import SpecError
from hepml_images.pipeline import render_variants, resolve_specs

SIX = """lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"

[[packages]]
name = "six"
version = "1.17.0"
sdist = { url = "https://files.example/six-1.17.0.tar.gz", hashes = { sha256 = "aa" } }
wheels = [{ url = "https://files.example/six.whl", hashes = { sha256 = "bb" } }]

[[packages]]
name = "nvidia-cudnn-cu12"
version = "9.28.0.42"
wheels = [{ url = "https://files.example/cudnn.whl", hashes = { sha256 = "cc" } }]
"""

INPUTS = lockfile.Inputs(
    python="3.11",
    platform="x86_64-manylinux_2_36",
    requirements=("six==1.17.0",),
    os_packages=("python3", "python3-venv"),
    parent="sha256:" + "0" * 64,
)


def _lock(**changes: object) -> lockfile.Lock:
    raw = lockfile.dump(
        spec="mine",
        variant="default",
        inputs=INPUTS,
        pylock=SIX,
        os=lockfile.OsLock(
            manager="apt",
            packages=(("python3", "3.11.2-1+b1"), ("zlib1g", "1:1.2.13.dfsg-1")),
            resolved=True,
        ),
        base=lockfile.BaseLock(kind="image", ref="debian:12", **changes),  # type: ignore[arg-type]
    )
    return lockfile.parse(raw)


def test_round_trip_keeps_pep751_and_tool_table() -> None:
    lock = _lock(digest="sha256:" + "1" * 64)
    assert lock.inputs == INPUTS
    assert [(p.name, p.version) for p in lock.packages] == [
        ("nvidia-cudnn-cu12", "9.28.0.42"),
        ("six", "1.17.0"),
    ]
    assert {f.sha256 for f in lock.packages[1].files} == {"aa", "bb"}
    assert dict(lock.os.packages)["zlib1g"] == "1:1.2.13.dfsg-1"
    assert lock.base.digest == "sha256:" + "1" * 64
    text = lock.raw.decode()
    assert text.startswith(SIX.rstrip("\n"))  # uv's PEP 751 text is kept as written
    assert "[tool.hepml]" in text
    assert lockfile.python_text(lock) == SIX


def test_lock_names_follow_pep751() -> None:
    assert lockfile.lock_name("21.2.247-cpu") == "pylock.21_2_247-cpu.toml"
    assert lockfile.is_pylock_name(lockfile.lock_name("21.2.247-cpu"))
    assert not lockfile.is_pylock_name("pylock.a.b.toml")
    path = lockfile.lock_path(Path("specs/debian-tensorflow.yaml"), "cpu")
    assert path == Path("specs/debian-tensorflow.locks/pylock.cpu.toml")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not = [toml", "not a TOML file"),
        (b'lock-version = "2.0"\n', "lock-version 2.0"),
        (b'lock-version = "1.0"\npackages = []\n', "no [tool.hepml] table"),
    ],
)
def test_unreadable_locks_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(lockfile.LockProblem, match=re.escape(message)):
        lockfile.parse(raw)


def test_stale_names_what_changed() -> None:
    lock = _lock()
    assert lockfile.stale(lock, INPUTS) == []
    now = lockfile.Inputs(
        python="3.12",
        platform=INPUTS.platform,
        requirements=("six==1.16.0",),
        os_packages=("python3",),
        parent="sha256:" + "2" * 64,
    )
    assert lockfile.stale(lock, now) == [
        "Python 3.11 -> 3.12",
        "requirement six==1.16.0 added",
        "requirement six==1.17.0 removed",
        "OS package python3-venv removed",
        "the parent's lock changed",
    ]


def test_requirements_text_is_hash_locked_and_skips_the_parents() -> None:
    lock = _lock()
    text = lockfile.requirements_text(lock).decode()
    assert "six==1.17.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n" in text
    child = lockfile.requirements_text(lock, skip={"six": "1.17.0"}).decode()
    assert "six" not in child.split("\n", 1)[1]
    assert "nvidia-cudnn-cu12==9.28.0.42" in child
    # another version than the parent's is installed over it
    assert "six==1.17.0" in lockfile.requirements_text(lock, skip={"six": "1.16.0"}).decode()


def test_versions_exposes_cuda_wheels() -> None:
    assert lockfile.versions(_lock()) == {"nvidia-cudnn-cu12": "9.28.0.42"}


def test_compare_reports_what_moved() -> None:
    old = _lock(digest="sha256:" + "1" * 64)
    new = lockfile.parse(old.raw.replace(b'"1.17.0"', b'"1.18.0"').replace(b"1" * 64, b"3" * 64))
    assert locking.compare(old, new) == [
        "six 1.17.0 -> 1.18.0",
        f"base digest sha256:{'1' * 64} -> sha256:{'3' * 64}",
    ]


SPEC = """name: mine
extends: debian-python
components:
  pip:
    requirements: [six==1.17.0]
"""


def _user_spec(tmp_path: Path, requirement: str = "six==1.17.0") -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(SPEC.replace("six==1.17.0", requirement))
    return path


def _write_lock(spec: Path) -> None:
    """A lock as `hepml-images lock` would write it, from the variant's own inputs."""
    variant = resolve_specs([str(spec)]).selected[0]
    parent = variant.parent
    assert parent is not None
    assert parent.lock is not None
    pylock = lockfile.python_text(parent.lock).rstrip("\n") + "\n\n" + SIX.split("\n\n", 1)[1]
    raw = lockfile.dump(
        spec="mine",
        variant="default",
        inputs=variant.lock_inputs,
        pylock=pylock,
        os=parent.lock.os,
        base=parent.lock.base,
    )
    target = Path(variant.lock_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)


def test_user_spec_without_lock_builds_unpinned_with_a_note(tmp_path: Path) -> None:
    variant = resolve_specs([str(_user_spec(tmp_path))]).selected[0]
    assert variant.lock is None
    assert variant.lock_note is not None
    assert "hepml-images lock mine" in variant.lock_note
    assert dict(variant.plan.labels).get("io.hepml.lock") is None


def test_build_installs_exactly_the_lock(tmp_path: Path) -> None:
    spec = _user_spec(tmp_path)
    unlocked = resolve_specs([str(spec)]).selected[0]
    _write_lock(spec)
    variant = resolve_specs([str(spec)]).selected[0]
    assert variant.lock is not None
    assert dict(variant.plan.labels)["io.hepml.lock"] == variant.lock.sha256
    assert variant.digest != unlocked.digest  # the content digest includes the lock
    files = render_variants([variant])[0][1]
    for text in (files.dockerfile, files.singularity):
        assert "--no-deps --require-hashes -r /.hepml/requirements/mine.lock.txt" in text
    context = {f.name: f.content for f in variant.plan.context}
    locked = context["requirements/mine.lock.txt"].decode()
    assert "six==1.17.0" in locked
    assert "numpy==" not in locked  # the parent installed it already
    assert "nvidia-cudnn-cu12==9.28.0.42" in locked


def test_changed_requirement_makes_the_lock_stale(tmp_path: Path) -> None:
    spec = _user_spec(tmp_path)
    _write_lock(spec)
    _user_spec(tmp_path, "six==1.16.0")
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(spec)])
    text = str(caught.value)
    assert "lock of variant default (mine.locks/pylock.default.toml) is stale" in text
    assert "requirement six==1.16.0 added; requirement six==1.17.0 removed" in text
    assert "hepml-images lock mine" in text


def test_a_relocked_parent_makes_the_child_stale(tmp_path: Path) -> None:
    spec = _user_spec(tmp_path)
    _write_lock(spec)
    lock_file = Path(resolve_specs([str(spec)]).selected[0].lock_path)
    text = lock_file.read_text()
    lock_file.write_text(
        re.sub(r'parent = "sha256:[0-9a-f]+"', f'parent = "sha256:{"9" * 64}"', text)
    )
    with pytest.raises(SpecError, match="the parent's lock changed"):
        resolve_specs([str(spec)])


def test_lock_check_does_not_complain_about_shipped_locks_offline() -> None:
    # every shipped variant resolves from its lock: none is missing or stale
    resolution = resolve_specs(["debian-tensorflow", "atlas-tensorflow"])
    assert all(v.lock is not None for v in resolution.variants)
    cuda = next(v for v in resolution.variants if v.key == "debian-tensorflow:cuda")
    assert cuda.lock is not None
    assert set(lockfile.versions(cuda.lock)) >= {"tensorflow", "nvidia-cudnn-cu12", "h5py"}


def test_a_pep751_lock_is_accepted_as_pip_file(tmp_path: Path) -> None:
    (tmp_path / "pylock.toml").write_text(SIX)
    spec = tmp_path / "given.yaml"
    spec.write_text(
        "name: given\nextends: debian-python\ncomponents:\n  pip:\n    file: pylock.toml\n"
    )
    variant = resolve_specs([str(spec)]).selected[0]
    files = render_variants([variant])[0][1]
    assert "--no-deps --require-hashes -r /.hepml/requirements/pylock.txt" in files.dockerfile
    context = {f.name: f.content for f in variant.plan.context}
    assert b"six==1.17.0 \\\n    --hash=sha256:aa" in context["requirements/pylock.txt"]
    assert variant.lock_inputs.requirements == ()  # already a lock: nothing to resolve


def test_a_broken_pep751_lock_is_a_spec_problem(tmp_path: Path) -> None:
    (tmp_path / "pylock.toml").write_text('lock-version = "1.0"\n[[packages]]\nname = "six"\n')
    spec = tmp_path / "given.yaml"
    spec.write_text(
        "name: given\nextends: debian-python\ncomponents:\n  pip:\n    file: pylock.toml\n"
    )
    with pytest.raises(SpecError, match=re.escape("pylock.toml: package six has no exact version")):
        resolve_specs([str(spec)])


def test_apt_simulate_lines_give_exact_versions() -> None:
    lines = [
        "Inst libhdf5-103-1 (1.10.8+repack1-1 Debian:12.13/stable [amd64])",
        "Inst libc6 [2.36-9+deb12u7] (2.36-9+deb12u13 Debian:12.13/stable [amd64])",
        "Conf libc6 (2.36-9+deb12u13 Debian:12.13/stable [amd64])",
    ]
    found = [m.groups() for m in map(locking._INST.match, lines) if m]
    assert found == [("libhdf5-103-1", "1.10.8+repack1-1"), ("libc6", "2.36-9+deb12u13")]


def test_the_cuda_labels_say_what_the_lock_installs() -> None:
    """``tensorflow[and-cuda]`` resolves to newer NVIDIA wheels than TensorFlow was tested with:
    the labels, the checks and NVIDIA_REQUIRE_CUDA follow the lock, not the table."""
    cuda = resolve_specs(["debian-tensorflow"], ["accelerator=cuda"]).selected[0]
    assert cuda.lock is not None
    wheels = lockfile.versions(cuda.lock)
    labels = dict(cuda.plan.labels)
    assert labels["io.hepml.version.cuda"] == ".".join(
        wheels["nvidia-cuda-runtime-cu12"].split(".")[:2]
    )
    assert labels["io.hepml.version.cudnn"] == ".".join(wheels["nvidia-cudnn-cu12"].split(".")[:2])
    assert locking.label_mismatch(cuda, cuda.lock) == ()
    rendered = render_variants([cuda])[0][1].dockerfile
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={labels["io.hepml.version.cuda"]} ' in rendered


@pytest.mark.parametrize(
    ("runtime", "cudnn", "why"),
    [
        ("11.8.89", "8.9.7.29", "the lock installs CUDA 11.8"),
        ("12.3.101", "9.3.0.75", "the lock installs CUDA 12.3"),
        ("12.9.79", "8.9.7.29", "the lock installs cuDNN 8.9"),
    ],
)
def test_a_lock_outside_what_tensorflow_was_tested_with_is_refused(
    runtime: str, cudnn: str, why: str
) -> None:
    tf = TensorflowInstall(requirement="tensorflow[and-cuda]==2.21.0", cuda="12.5", cudnn="9.3")
    suffix = "cu11" if runtime.startswith("11") else "cu12"
    lock = lockfile.Lock(
        spec="x",
        variant="cuda",
        inputs=lockfile.Inputs(),
        packages=(
            lockfile.Package(name=f"nvidia-cuda-runtime-{suffix}", version=runtime),
            lockfile.Package(name=f"nvidia-cudnn-{suffix}", version=cudnn),
        ),
    )
    reported: list[str] = []
    assert resolve._locked_cuda(tf, lock, lambda _p, m, _h=None: reported.append(m)) is None
    assert reported
    assert why in reported[0]
