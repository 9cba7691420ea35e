"""Hostile specs: what a spec from someone else must not be able to do to the machine reading it.

Every case writes a spec into ``tmp_path`` and calls the library (load → resolve → render); the
answer must be a ``SpecError`` naming file, line and key, quickly, or a valid render.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hepml_images import resolve
from hepml_images.errors import SpecError, UsageError
from hepml_images.pipeline import render_variants, resolve_directory, resolve_specs
from hepml_images.spec import files, yamlload
from hepml_images.spec.load import did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable

HEAD = """\
name: hostile
base:
  image: debian:12
  family: debian
  release: bookworm
"""


def write(directory: Path, text: str, name: str = "hostile") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, *selection: str) -> list[tuple[int | None, str, str]]:
    """(line, key, message) of every problem; fails when the spec is accepted."""
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(path)], selection)
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def has(found: list[tuple[int | None, str, str]], key: str, *parts: str) -> bool:
    return any(k == key and all(part in m for part in parts) for _, k, m in found)


def render_all(path: Path) -> None:
    resolution = resolve_specs([str(path)])
    render_variants(resolution.variants)


# --- 1. files from outside the spec directory --------------------------------------------------

FILES = HEAD + "files:\n  - src: {src}\n    dest: /p\n"
LOCK = HEAD + (
    'components:\n  python:\n    version: "3.11"\n'
    "  pip:\n    file: {src}\n    require-hashes: true\n"
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret outside the spec directory, and the spec directory beside it."""
    secret = tmp_path / "secret"
    secret.write_text("root:hash-of-the-host\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    return specs


@pytest.mark.parametrize("template", [FILES, LOCK], ids=["files", "pip-file"])
def test_symlink_out_of_the_spec_directory_is_refused(outside: Path, template: str) -> None:
    (outside / "p").symlink_to(outside.parent / "secret")
    spec = write(outside, template.format(src="p"))
    key = "files[0].src" if template is FILES else "components.pip.file"
    assert has(problems(spec), key, "outside the spec's directory")


def test_symlinked_folder_out_of_the_spec_directory_is_refused(outside: Path) -> None:
    (outside / "sub").symlink_to(outside.parent)
    spec = write(outside, FILES.format(src="sub/secret"))
    assert has(problems(spec), "files[0].src", "outside the spec's directory")


def test_absolute_symlink_to_a_host_file_is_refused(outside: Path) -> None:
    (outside / "p").symlink_to("/etc/passwd")
    spec = write(outside, FILES.format(src="p"))
    found = problems(spec)
    assert has(found, "files[0].src", "outside the spec's directory")
    assert not any("root:" in m for _, _, m in found)


def test_symlink_inside_the_spec_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("hello\n")
    (tmp_path / "p").symlink_to("real.txt")
    spec = write(tmp_path, FILES.format(src="p"))
    resolution = resolve_specs([str(spec)])
    (copied,) = resolution.selected[0].content.files
    assert copied.content == b"hello\n"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    spec = write(tmp_path, FILES.format(src="p"))
    started = time.monotonic()
    assert has(problems(spec), "files[0].src", "named pipe", "not a regular file")
    assert time.monotonic() - started < 5


def test_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").symlink_to("/dev/zero")
    spec = write(tmp_path, FILES.format(src="p"))
    assert has(problems(spec), "files[0].src", "outside the spec's directory")
    with pytest.raises(files.FileProblem, match="a device"):
        files.read_regular(Path("/dev/zero"), limit=10, what="zero")


def test_socket_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "s"  # AF_UNIX paths are short
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.bind(str(short))
        except OSError:
            pytest.skip("cannot bind a unix socket here")
        spec = write(tmp_path, FILES.format(src="s"))
        assert has(problems(spec), "files[0].src", "a socket")


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    spec = write(tmp_path, FILES.format(src="d"))
    assert has(problems(spec), "files[0].src", "a directory")


def test_spec_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    started = time.monotonic()
    found = problems(tmp_path / "fifo.yaml")
    assert any("named pipe" in m for _, _, m in found)
    assert time.monotonic() - started < 5


def test_oversized_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as out:  # sparse: large on paper, nothing written
        out.truncate(files.MAX_FILE_BYTES + 1)
    spec = write(tmp_path, FILES.format(src="big.bin"))

    real_read = os.read

    def checked_read(fd: int, size: int) -> bytes:
        assert os.fstat(fd).st_size <= files.MAX_FILE_BYTES, "read despite the size"
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", checked_read)
    assert has(problems(spec), "files[0].src", "the limit is 64 MiB")


def test_oversized_lock_file_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    with lock.open("wb") as out:
        out.truncate(files.MAX_LOCK_BYTES + 1)
    spec = write(tmp_path, LOCK.format(src="lock.txt"))
    assert has(problems(spec), "components.pip.file", "the limit is 4 MiB")


def test_read_stops_at_the_limit_when_the_size_lies() -> None:
    # /proc files report size 0 and still have content: the read itself is bounded
    if not os.path.exists("/proc/self/status"):  # noqa: PTH110
        pytest.skip("no /proc")
    with pytest.raises(files.FileProblem, match="larger than the limit"):
        files.read_regular(Path("/proc/self/status"), limit=8, what="x")


# --- 2. resources: every limit checked before the work ----------------------------------------


def quickly(seconds: float = 5.0) -> Callable[[], None]:
    started = time.monotonic()

    def check() -> None:
        assert time.monotonic() - started < seconds, "took too long"

    return check


def test_huge_matrix_is_refused_before_expansion(tmp_path: Path) -> None:
    axes = "".join(
        f"  a{axis}: [{', '.join(f'v{value}' for value in range(20))}]\n" for axis in range(6)
    )
    spec = write(tmp_path, HEAD + "matrix:\n" + axes)
    done = quickly(2)
    found = problems(spec)
    done()
    assert has(found, "matrix", "64000000 variants", f"limit is {resolve.MAX_VARIANTS}")


def test_matrix_of_a_child_counts_its_parents_variants(tmp_path: Path) -> None:
    values = ", ".join(f"v{n}" for n in range(20))
    write(tmp_path, HEAD.replace("hostile", "parent") + f"matrix:\n  a: [{values}]\n", "parent")
    child = write(tmp_path, f"name: child\nextends: parent\nmatrix:\n  b: [{values}]\n", "child")
    assert has(problems(child), "matrix", "400 variants")


def test_too_many_include_entries(tmp_path: Path) -> None:
    entries = "".join(f"    - {{a: x, k{n}: v}}\n" for n in range(resolve.MAX_MATRIX_ENTRIES + 1))
    spec = write(tmp_path, HEAD + "matrix:\n  a: [x]\n  include:\n" + entries)
    assert has(problems(spec), "matrix.include", "the limit is 256")


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nbase: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "name: x\nbase: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n",
        "name: x\nbase:\n" + "".join(" " * n + "- \n" for n in range(0, 400, 2)),
    ],
    ids=["flow-lists", "flow-maps", "block-lists"],
)
def test_deep_nesting_is_a_problem_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    spec = write(tmp_path, text)
    done = quickly()
    found = problems(spec)
    done()
    assert any(
        m.startswith(f"nesting deeper than {yamlload.MAX_DEPTH}") and k.startswith("base")
        for _, k, m in found
    )


def test_alias_expansion_is_bounded_in_bytes(tmp_path: Path) -> None:
    big = "y" * 200_000
    text = (
        HEAD
        + f"description: &big {big}\nlabels:\n"
        + "".join(f"  k{n}: *big\n" for n in range(100))
    )
    spec = write(tmp_path, text)
    done = quickly()
    found = problems(spec)
    done()
    assert any("bytes of text" in m and k.startswith("labels.") for _, k, m in found)


def test_long_extends_chain_is_refused_without_recursion(tmp_path: Path) -> None:
    write(tmp_path, HEAD.replace("hostile", "s0"), "s0")
    for n in range(1, 3000):
        write(tmp_path, f"name: s{n}\nextends: s{n - 1}\n", f"s{n}")
    done = quickly(60)
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(tmp_path / "s2999.yaml")])
    done()
    (problem,) = caught.value.problems
    assert problem.path == "extends"
    assert problem.line == 2
    assert f"more than {resolve.MAX_EXTENDS_DEPTH} specs long" in problem.message


def test_long_extends_cycle_is_reported_without_recursion(tmp_path: Path) -> None:
    for n in range(2000):
        write(tmp_path, f"name: c{n}\nextends: c{(n + 1) % 2000}\n", f"c{n}")
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(tmp_path / "c0.yaml")])
    assert all("extends cycle" in p.message for p in caught.value.problems)
    assert all(len(p.message) < 200 for p in caught.value.problems)


def _load_many(directory: Path, count: int) -> float:
    directory.mkdir()
    for n in range(count):
        write(directory, HEAD.replace("hostile", f"s{n}"), f"s{n}")
    started = time.perf_counter()
    resolve_directory(directory)
    return time.perf_counter() - started


def test_loading_many_specs_is_linear(tmp_path: Path) -> None:
    small = _load_many(tmp_path / "small", 200)
    large = _load_many(tmp_path / "large", 1600)
    # 8 times the specs: linear is 8 times the time; quadratic was 64 times. Allow noise.
    assert large < 20 * small + 1.0


def test_did_you_mean_is_bounded(tmp_path: Path) -> None:
    done = quickly(2)
    assert did_you_mean("x" * 100_000, ["x" * 99_999, "y"]) is None
    many = [f"choice{n}" for n in range(200_000)]
    assert did_you_mean("choice12345x", many) is not None
    assert did_you_mean("abc", ["abd", "q" * 1_000_000]) == "did you mean 'abd'?"
    done()
    long = "x" * 500_000
    spec = write(tmp_path, f"name: x\nbase:\n  image: debian:12\n  family: {long}\n")
    done = quickly(5)
    assert has(problems(spec), "base.family", "expected one of")
    done()


# --- 3. wrong acceptance -----------------------------------------------------------------------


def test_two_variants_publishing_the_same_tag(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        HEAD + "matrix:\n  a: [x, y]\npublish:\n  repositories: [ghcr.io/org/img]\n"
        "  tags: [latest]\n",
    )
    assert has(problems(spec), "publish.tags", "ghcr.io/org/img:latest", "hostile:x", "hostile:y")


def test_immutable_tags_collide_too(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "matrix:\n  a: [x, y]\npublish:\n  immutable: ['1.0']\n")
    assert has(problems(spec), "tags", "<registry>/hostile:1.0")


def test_two_specs_publishing_the_same_repository_tag(tmp_path: Path) -> None:
    common = "publish:\n  repositories: [ghcr.io/org/img]\ntags: [v1]\n"
    write(tmp_path, HEAD.replace("hostile", "one") + common, "one")
    two = write(tmp_path, "name: two\nextends: one\n" + common, "two")
    found = problems(two)
    assert has(found, "tags", "ghcr.io/org/img:v1", "one:default", "two:default")


@pytest.mark.parametrize(
    ("repository", "why"),
    [
        ("ghcr.io/MyOrg/img", "invalid path component 'MyOrg'"),
        ("MyOrg/img", "invalid path component 'MyOrg'"),
        ("ghcr.io/org/img-", "invalid path component 'img-'"),
        ("ghcr.io/org/-img", "invalid path component '-img'"),
        ("ghcr-.io/org/img", "invalid registry host 'ghcr-.io'"),
        ("ghcr.io/" + "a" * 250, "characters long"),
    ],
)
def test_oci_invalid_repository(tmp_path: Path, repository: str, why: str) -> None:
    spec = write(tmp_path, HEAD + f"publish:\n  repositories: [{repository}]\n")
    assert has(problems(spec), "publish.repositories[0]", why)


def test_valid_repositories_are_accepted(tmp_path: Path) -> None:
    repositories = "[localhost:5000/a/b, ghcr.io/org/a--b, registry.example.org/g_x/n.y]"
    spec = write(tmp_path, HEAD + f"publish:\n  repositories: {repositories}\n")
    render_all(spec)


def test_base_image_with_upper_case_namespace(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD.replace("debian:12", "MyOrg/debian:12"))
    assert has(problems(spec), "base.image", "invalid path component 'MyOrg'")


def test_spec_name_with_trailing_dash(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD.replace("name: hostile", "name: hostile-"))
    assert has(problems(spec), "name", "no dash at the start or end")


def test_over_long_spec_name(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD.replace("name: hostile", "name: " + "a" * 250))
    assert has(problems(spec), "name", "characters long", "249")


def test_over_long_tag(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "tags: [" + "t" * 129 + "]\n")
    assert has(problems(spec), "tags[0]", "129 characters long")


def test_over_long_variant_name(tmp_path: Path) -> None:
    axes = "".join(f"  a{n}: [{'v' * 30}{n}]\n" for n in range(5))
    spec = write(tmp_path, HEAD + "matrix:\n" + axes + "tags: [fixed]\n")
    assert has(problems(spec), "matrix", "characters long", "128")


TF = """\
components:
  python:
    version: "3.11"
  cuda:
    version: "12.5"
    cudnn: "9.3"
  tensorflow:
    version: "2.18.1"
    accelerator: ${{ matrix.accelerator }}
matrix:
  accelerator: [cpu, cuda]
"""


def test_cuda_installed_for_a_cpu_accelerator(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + TF)
    found = problems(spec)
    assert has(found, "components.cuda", "CUDA is installed", "accelerator is cpu")
    assert len(found) == 1


def test_cpu_child_of_a_cuda_parent(tmp_path: Path) -> None:
    parent = HEAD.replace("hostile", "gpu") + (
        'components:\n  python:\n    version: "3.11"\n'
        '  cuda:\n    version: "12.5"\n    cudnn: "9.3"\n'
    )
    write(tmp_path, parent, "gpu")
    child = write(
        tmp_path,
        'name: child\nextends: gpu\ncomponents:\n  tensorflow:\n    version: "2.18.1"\n'
        "    accelerator: cpu\n",
        "child",
    )
    assert has(problems(child), "components.tensorflow.accelerator", "parent image has CUDA")


def test_enumerated_value_through_the_matrix_is_checked_again(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "name: hostile\nmatrix:\n  d: [ubuntu]\nbase:\n  bootstrap:\n"
        "    distro: ${{ matrix.d }}\n    suite: bookworm\n",
    )
    assert has(problems(spec), "base.bootstrap.distro", "must be one of debian", "'ubuntu'")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu:\n  check: ${{ matrix.v }}\n", "sometimes"),
        ("singularity:\n  sif: ${{ matrix.v }}\n", "maybe"),
        ('components:\n  python:\n    version: "3.11"\n    source: ${{ matrix.v }}\n', "conda"),
    ],
)
def test_enumerations_and_flags_through_the_matrix(tmp_path: Path, field: str, value: str) -> None:
    spec = write(tmp_path, HEAD + f"matrix:\n  v: [{value}]\n" + field)
    assert any(repr(value) in m for _, _, m in problems(spec))


@pytest.mark.parametrize(
    "template",
    ["v${{ matrix.a }}-${{ oops", "${{ matrix.a }", "x-${{matrix.a}}-${{ spec }}"],
)
def test_malformed_expression_in_a_tag_is_reported(tmp_path: Path, template: str) -> None:
    spec = write(tmp_path, HEAD + f"matrix:\n  a: [x]\ntags: ['{template}']\n")
    assert has(problems(spec), "tags[0]", "malformed expression")


def test_no_tag_is_dropped_silently(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "matrix:\n  a: [x]\ntags: ['${{ matrix.a }}~bad']\n")
    assert has(problems(spec), "tags[0]", "is not valid")


HASHED = HEAD + (
    'components:\n  python:\n    version: "3.11"\n'
    "  pip:\n    file: lock.txt\n    require-hashes: true\n"
)
HASH = "--hash=sha256:" + "a" * 64


def lock(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / "lock.txt").write_bytes(content)
    return write(tmp_path, HASHED)


def test_hash_in_a_comment_is_no_hash(tmp_path: Path) -> None:
    spec = lock(tmp_path, f"numpy==2.1.3  # {HASH}\n".encode())
    assert has(problems(spec), "components.pip.file", "not hash-locked", "numpy==2.1.3")


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("-e ./src", "-e"),
        ("--editable=./src", "--editable"),
        ("-r other.txt", "-r"),
        ("-rother.txt", "-r"),
        ("--requirement other.txt", "--requirement"),
        ("-c constraints.txt", "-c"),
    ],
)
def test_nested_files_and_editables_are_refused(tmp_path: Path, line: str, option: str) -> None:
    spec = lock(tmp_path, f"numpy==2.1.3 {HASH}\n{line}\n".encode())
    assert has(problems(spec), "components.pip.file", "line 2", option, "require-hashes")


def test_crlf_lock_file_is_accepted(tmp_path: Path) -> None:
    text = f"numpy==2.1.3 \\\r\n    {HASH}\r\n# a comment\r\nuproot==5.4 {HASH} \\\r\n  {HASH}\r\n"
    spec = lock(tmp_path, text.encode())
    resolution = resolve_specs([str(spec)])
    pip = resolution.selected[0].content.components.pip
    assert pip is not None
    assert pip.file_content == text.encode()


def test_hash_with_a_fragment_is_still_a_hash(tmp_path: Path) -> None:
    spec = lock(tmp_path, f"numpy @ https://x.invalid/n.whl#sha256=00 {HASH}\n".encode())
    resolve_specs([str(spec)])


def test_repeated_variant_key_is_a_usage_error(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "matrix:\n  a: [x, y]\n")
    with pytest.raises(UsageError, match="given twice") as caught:
        resolve_specs([str(spec)], ["a=x", "a=y"])
    assert caught.value.exit_code == 2


# --- 4. where problems are reported, and how much of the input they quote --------------------


@pytest.mark.parametrize(
    ("base", "key"),
    [
        ("  image: true\n  family: debian\n", "base.image"),
        ("  image: [x]\n  family: debian\n", "base.image"),
        ("  image: debian:12\n  family: plan9\n", "base.family"),
        ("  image: debian:12\n  family: debian\n  releas: x\n", "base.releas"),
        ("  bootstrap:\n    suite: bookworm\n    mirrror: x\n", "base.bootstrap.mirrror"),
    ],
)
def test_problems_inside_base_name_their_key(tmp_path: Path, base: str, key: str) -> None:
    spec = write(tmp_path, "name: x\nbase:\n" + base)
    found = problems(spec)
    assert any(k == key for _, k, _ in found), found
    assert not any(k == "base" for _, k, _ in found), found


def test_messages_do_not_quote_a_whole_file(tmp_path: Path) -> None:
    secret = "s" * 100_000
    cases = [
        f"name: x\nbase:\n  image: debian:12\n  family: {secret}\n",
        f"{secret}\n",
        f"name: x\nbase:\n  image: {secret}\n  family: debian\n",
        HEAD + f"env:\n  A: '`{secret}'\n",
        HEAD + f"matrix:\n  a: [x]\ntags: ['${{{{ matrix.b }}}}{secret}']\n",
    ]
    for index, text in enumerate(cases):
        spec = write(tmp_path, text, f"case{index}")
        with pytest.raises(SpecError) as caught:
            resolve_specs([str(spec)])
        assert len(str(caught.value)) < 2_000, text[:40]


def test_parent_linked_out_of_the_directory_is_not_read(outside: Path) -> None:
    (outside / "debian-base.yaml").symlink_to(outside.parent / "secret")
    child = write(outside, "name: child\nextends: debian-base\n", "child")
    found = problems(child)
    assert any("outside" in m for _, _, m in found), found
    assert not any("root:" in m for _, _, m in found)


def test_list_of_a_directory_does_not_follow_links_out_of_it(outside: Path) -> None:
    (outside / "evil.yaml").symlink_to(outside.parent / "secret")
    with pytest.raises(SpecError) as caught:
        resolve_directory(outside)
    assert "outside" in str(caught.value)
    assert "root:" not in str(caught.value)


def test_a_file_that_is_no_spec_is_not_quoted(tmp_path: Path) -> None:
    spec = write(tmp_path, "secret text of some other file, not a spec\n")
    with pytest.raises(SpecError) as caught:
        resolve_specs([str(spec)])
    assert "secret" not in str(caught.value)
