"""Grid images from real tested images: SIF files checked by siftool, their content compared with
the engine's own export of the image, smoke tests on the SIF's root filesystem, byte-identical
rebuilds, ORAS round trips through the loopback registry, sandboxes and DUCC wishlists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from typing import IO, TYPE_CHECKING, Any, cast

import pytest
import yaml

from hepml_images import oras
from hepml_images.sif import format as sif_format
from hepml_images.sif import layout
from tests.conftest import require_tool
from tests.integration.helpers import DEFAULT_SIF, cli_env, run

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from tests.integration.registry import Registry

pytestmark = pytest.mark.integration

EPOCH = "1700000000"
#: What Docker's init layer puts into a container's export (not the image's files).
_INIT_LAYER = {".dockerenv", "etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siftool(*args: str) -> str:
    done = subprocess.run(
        [require_tool("siftool"), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_build_sif_makes_a_sif_that_siftool_accepts(default_sif: tuple[Path, Path, Any]) -> None:
    _, sif, report = default_sif
    assert [s["path"] for s in report["sif"]] == [str(sif)]
    assert report["sif"][0]["size"] == sif.stat().st_size
    listing = siftool("list", str(sif))
    rows = [line for line in listing.splitlines() if "|" in line and line[0].isdigit()]
    assert len(rows) == 3, listing
    assert rows[0].rstrip().endswith("Def.FILE")
    assert rows[1].rstrip().endswith("JSON.Labels")
    assert rows[2].rstrip().endswith("FS (Squashfs/*System/amd64)")
    assert "Primary Architecture: amd64" in siftool("header", str(sif))
    info = sif_format.read_sif(sif)
    assert sif_format.primary_partition(info).id == 3
    assert re.search(r"Partition Type: +\*System", siftool("info", "3", str(sif)))
    deffile = siftool("dump", "1", str(sif))
    assert "Bootstrap: docker-daemon" in deffile
    assert "From: hepml/debian-tensorflow:" in deffile
    assert "-tested" in deffile
    labels = json.loads(siftool("dump", "2", str(sif)))
    assert labels["io.hepml.spec"] == "debian-tensorflow"
    assert labels["io.hepml.smoke.result"] == "passed"
    assert labels["org.opencontainers.image.version"]
    inspected = run(default_sif[0], "inspect", str(sif), "--json").json()
    assert inspected["where"] == "SIF file"
    assert inspected["labels"] == labels
    assert inspected["digest"] == f"sha256:{sha256(sif)}"
    assert inspected["smoke_test"]["passed"] is True


def test_the_sif_content_passes_the_smoke_tests(default_sif: tuple[Path, Path, Any]) -> None:
    _, sif, report = default_sif
    [tested] = report["sif_tests"]
    assert tested["sif"] == str(sif)
    assert tested["passed"], tested
    names = {c["name"]: c["status"] for c in tested["checks"]}
    assert names["TensorFlow 2.21.0 imports and computes"] == "passed"
    assert names["h5py uses HDF5 1.10"] == "passed"
    assert all(status == "passed" for status in names.values()), names


def test_the_sif_is_byte_identical_across_runs_with_source_date_epoch(
    default_sif: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    state, built, _ = default_sif
    first, second = tmp_path / "first.sif", tmp_path / "second.sif"
    for target in (first, second):
        made = run(state, "sif", "-o", str(target), "--no-test", "--json", epoch=EPOCH)
        assert made.code == 0, made.stderr[-3000:]
        assert made.json()["sif"][0]["sha256"] == sha256(target)
    # by digest: pytest's diff of two 480 MB byte strings would run for hours
    assert sha256(first) == sha256(second), "two SIFs of the same image differ"
    header = siftool("header", str(first))
    assert "Created At:           2023-11-14 22:13:20 +0000 UTC" in header  # the epoch
    assert sif_format.read_sif(first).created == int(EPOCH)
    # the same root filesystem as the SIF the build made (at the image's own time)
    partitions = []
    for sif in (first, built):
        info = sif_format.read_sif(sif)
        partitions.append(sif_format.primary_partition(info).size)
    assert partitions[0] == partitions[1]


def test_publish_sif_round_trips_through_the_registry_as_oras(
    default_sif: tuple[Path, Path, Any], registry: Registry, tmp_path: Path
) -> None:
    state, sif, _ = default_sif
    target = f"{registry.host}/hepml-grid"
    args = ("publish", "--sif", "--sif-dir", str(sif.parent), "--registry", target, "--json")
    published = run(state, *args, registry=registry)
    assert published.code == 0, published.stderr[-3000:]
    assert "up to date (same tested image)" in published.stderr  # the SIF was not made again
    rows = published.json()["sif"]
    assert rows
    assert all(r["action"] == "pushed" for r in rows), rows
    assert {r["layer"] for r in rows} == {f"sha256:{sha256(sif)}"}

    reference = rows[0]["reference"].removeprefix("oras://")
    pulled = oras.pull_sif(
        reference,
        tmp_path / "pulled.sif",
        credentials=registry.credentials(),
    )
    assert sha256(pulled.path) == sha256(sif)
    assert pulled.layer_media_type == "application/vnd.sylabs.sif.layer.v1.sif"
    assert pulled.config_media_type == "application/vnd.sylabs.sif.config.v1+json"
    assert pulled.layer_annotations["org.opencontainers.image.title"] == DEFAULT_SIF
    repo, tag = reference.removeprefix(f"{registry.host}/").rsplit(":", 1)
    digest, manifest = registry.manifest(repo, tag)
    assert digest == pulled.manifest_digest == rows[0]["manifest"]
    assert manifest["config"]["mediaType"] == "application/vnd.sylabs.sif.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.sylabs.sif.layer.v1.sif"
    ]

    # again: every tag already holds this SIF; nothing is pushed
    again = run(state, *args, registry=registry)
    assert again.code == 0, again.stderr[-3000:]
    assert {r["action"] for r in again.json()["sif"]} == {"up to date"}
    assert again.json()["sif"][0]["manifest"] == digest
    assert registry.manifest(repo, tag)[0] == digest  # the tag was not rewritten

    # an immutable SIF tag that holds another file is not overwritten without --force
    other = tmp_path / "other.sif"
    other.write_bytes(b"not the tested image")
    creds = registry.credentials()
    oras.push_sif(other, reference, credentials=creds)
    refused = run(state, *args, registry=registry)
    assert refused.code == 1
    assert "immutable SIF tags hold another file" in refused.stderr
    assert (oras.remote_sif(reference, credentials=creds) or ("", ""))[1] == (
        f"sha256:{sha256(other)}"
    )
    forced = run(state, *args, "--force", registry=registry)
    assert forced.code == 0, forced.stderr[-3000:]
    assert (oras.remote_sif(reference, credentials=creds) or ("", ""))[1] == f"sha256:{sha256(sif)}"

    # the DUCC wishlist pins the published image by the registry's digest
    wishlist = tmp_path / "wishlist.yaml"
    listed = run(
        state,
        "ducc-wishlist",
        "--registry",
        target,
        "--user",
        "atlasml",
        "-o",
        str(wishlist),
        registry=registry,
    )
    assert listed.code == 0, listed.stderr[-3000:]
    document = yaml.safe_load(wishlist.read_text())
    assert document["version"] == 1
    assert document["cvmfs_repo"] == "unpacked.cern.ch"
    assert document["user"] == "atlasml"
    [entry] = document["input"]
    image_repo = "hepml-grid/debian-tensorflow"
    content_tag = tag.removesuffix("-sif")
    image_digest, _ = registry.manifest(image_repo, content_tag)
    assert entry == f"http://{registry.host}/{image_repo}:{content_tag}@{image_digest}"


def _entries(stream: IO[bytes]) -> dict[str, tuple[Any, ...]]:
    """path → (type, mode, uid, gid, link target, size, mtime) of a tar stream."""
    found: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            kind = member.type
            if member.islnk():
                kind = tarfile.REGTYPE  # a hard link is a regular file in both trees
            found[name] = (
                kind,
                member.mode & 0o7777,
                member.uid,
                member.gid,
                member.linkname if member.issym() else "",
                member.size if member.isreg() else 0,
                int(member.mtime) if member.isreg() or member.issym() else 0,
            )
    return found


def test_the_squashfs_holds_the_image_files_with_modes_and_links(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The SIF of debian-hdf5 (three layers), against the engine's own export of the image."""
    sqfs2tar = require_tool("sqfs2tar")
    state = tmp_path / "state"
    made = run(state, "build", "debian-hdf5", "--sif", "--sif-dir", str(tmp_path), "--json")
    assert made.code == 0, made.stderr[-3000:]
    [summary] = made.json()["sif"]
    sif = tmp_path / "debian-hdf5-default.sif"
    partition = tmp_path / "rootfs.squashfs"
    with sif.open("rb") as source, partition.open("wb") as target:
        sif_format.copy_object(
            source, sif_format.primary_partition(sif_format.read_sif(sif)), target
        )
    with subprocess.Popen(
        [sqfs2tar, "--root-becomes", ".", str(partition)], stdout=subprocess.PIPE
    ) as reader:
        assert reader.stdout is not None
        in_sif = _entries(reader.stdout)
    assert reader.returncode == 0

    container = docker_client.containers.create(summary["image_id"], command=["true"])
    try:
        export = tmp_path / "export.tar"
        with export.open("wb") as handle:
            for chunk in container.export():
                handle.write(cast("bytes", chunk))
    finally:
        container.remove(force=True)
    with export.open("rb") as handle:
        in_image = _entries(handle)

    added = {e.path for e in layout.entries({})}
    ours = {p for p in in_sif if p in added or p.startswith(".singularity.d/")}
    image_paths = {
        p for p in in_image if p not in _INIT_LAYER and not p.startswith(("dev/", "proc/", "sys/"))
    }
    assert image_paths - set(in_sif) == set(), "files of the image missing from the SIF"
    extra = {p for p in set(in_sif) - image_paths - ours if not p.startswith("dev/")}
    assert extra <= {"dev", "proc", "sys", "etc/hosts", "etc/resolv.conf"}, extra
    for path in sorted(image_paths):
        if in_image[path][0] == tarfile.DIRTYPE:
            assert in_sif[path][:5] == in_image[path][:5], path  # docker's init layer moved times
        else:
            assert in_sif[path] == in_image[path], path
    assert in_sif[".singularity.d/actions/exec"][1] == 0o755
    assert in_sif["srv"][0] == in_sif["cvmfs"][0] == tarfile.DIRTYPE
    assert in_sif["singularity"][4] == ".singularity.d/runscript"
    usr_links = [p for p, e in in_image.items() if e[0] == tarfile.SYMTYPE]
    assert usr_links, "the image has symbolic links (usrmerge): they must be compared"


def test_sandbox_is_the_flat_tree_with_the_apptainer_layout(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tested = run(state, "build", "debian-base")
    assert tested.code == 0, tested.stderr[-3000:]
    sandbox = tmp_path / "sandbox"
    made = run(state, "sandbox", "debian-base", "-o", str(sandbox))
    assert made.code == 0, made.stderr[-3000:]
    assert (sandbox / "etc" / "debian_version").read_text().startswith("12.")
    assert os.access(sandbox / ".singularity.d" / "actions" / "exec", os.X_OK)
    labels = json.loads((sandbox / ".singularity.d" / "labels.json").read_text())
    assert labels["io.hepml.spec"] == "debian-base"
    assert labels["io.hepml.smoke.result"] == "passed"
    assert (sandbox / "srv").is_dir()
    assert (sandbox / "cvmfs").is_dir()
    assert (sandbox / "singularity").readlink().as_posix() == ".singularity.d/runscript"
    if os.geteuid() == 0:  # the tree is root's, as in the image
        assert (sandbox / "etc").stat().st_uid == 0
        assert (sandbox / "root").stat().st_mode & 0o777 == 0o700

    # again into the same directory: it holds that image already
    again = run(state, "sandbox", "debian-base", "-o", str(sandbox))
    assert again.code == 0, again.stderr[-3000:]
    assert "up to date" in again.stderr

    # into a directory with other content: refused, nothing lost
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious").write_text("keep me\n")
    refused = run(state, "sandbox", "debian-base", "-o", str(other))
    assert refused.code == 1
    assert "not an empty directory" in refused.stderr
    assert [p.name for p in other.iterdir()] == ["precious"]
    assert (other / "precious").read_text() == "keep me\n"


def test_untested_images_and_broken_files_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    built = run(state, "build", "debian-base", "--no-test")
    assert built.code == 0, built.stderr[-3000:]
    target = tmp_path / "base.sif"
    refused = run(state, "sif", "debian-base", "-o", str(target))
    assert refused.code == 1
    assert "no smoke-test result" in refused.stderr
    assert "--allow-untested" in refused.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hepml-sif-")]

    broken = tmp_path / "broken.sif"
    broken.write_bytes(b"#!/usr/bin/env run-singularity\n" + b"\0" * 100)
    tested = run(state, "test", str(broken))
    assert tested.code == 1
    assert f"cannot read {broken}" in tested.stderr


def test_an_interrupted_sif_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    built = run(state, "build", "debian-base", "--no-test")
    assert built.code == 0, built.stderr[-3000:]
    target = tmp_path / "out" / "base.sif"
    env = cli_env(state)
    argv = [sys.executable, "-m", "hepml_images", "sif", "debian-base", "-o", str(target)]
    with subprocess.Popen(
        [*argv, "--allow-untested", "--no-test"], env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "unpack 100%" in line:  # mksquashfs is starting
                process.send_signal(signal.SIGTERM)
                break
        rest = process.stderr.read()
        code = process.wait(timeout=120)
    assert code == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    running = subprocess.run(["pgrep", "-f", str(target.parent)], capture_output=True, check=False)
    assert running.stdout == b"", "mksquashfs outlived the interrupted command"
