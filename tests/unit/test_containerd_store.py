"""The containerd image store's ways, without an engine: its IDs and its ``docker save`` archives.

On that store (Docker Engine 29's and Docker Desktop's default) an image's ID is its manifest's
digest, not its configuration's, and ``docker save`` writes an OCI layout whose layer blobs are
kept as stored: gzip or zstd compressed, behind nested indexes. The archives here are written by
the tests in both layouts; the real store is in tests/integration/test_containerd_store.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any, cast

import pytest
import zstandard

from hepml_images.build import images
from hepml_images.engine import Activity, EngineError, Image, dockerapi
from hepml_images.pipeline import resolve_directory
from hepml_images.sif import rootfs
from hepml_images.spec.load import shipped_dir
from tests.unit.fakes import FakeEngine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EPOCH = 1_700_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in sorted(files.items()):
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _compress(layer: bytes, how: str) -> tuple[bytes, str]:
    """The blob as the store keeps it, and its media type."""
    if how == "gzip":
        return gzip.compress(layer, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        # two frames: a store may write a layer in several (read_across_frames)
        half = len(layer) // 2
        compressor = zstandard.ZstdCompressor()
        blob = compressor.compress(layer[:half]) + compressor.compress(layer[half:])
        return blob, "application/vnd.oci.image.layer.v1.tar+zstd"
    return layer, "application/vnd.oci.image.layer.v1.tar"


def _json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True).encode()


def oci_archive(layers: list[bytes], compression: list[str], *, nested: bool) -> bytes:
    """What the containerd store's ``docker save`` writes: an OCI layout plus ``manifest.json``.

    With ``nested`` the top ``index.json`` points at an image index that points at the
    manifest (a multi-platform image, or one with attestations), as the store may write it.
    """
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = _sha(data)
        blobs[digest] = data
        return digest

    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_sha(layer) for layer in layers]},
        }
    )
    descriptors: list[dict[str, Any]] = []
    for layer, how in zip(layers, compression, strict=True):
        data, media = _compress(layer, how)
        descriptors.append({"mediaType": media, "digest": blob(data), "size": len(data)})
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    )
    top = {"mediaType": OCI_MANIFEST, "digest": blob(manifest), "size": len(manifest)}
    if nested:
        inner = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
        top = {"mediaType": OCI_INDEX, "digest": blob(inner), "size": len(inner)}
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    legacy = _json(
        [
            {
                "Config": f"blobs/sha256/{_sha(config)[7:]}",
                "RepoTags": ["hepml/t:1"],
                "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in descriptors],
            }
        ]
    )
    members = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))]
    # blobs in no particular order (not the image's), then the metadata, as the store writes it
    members += [(f"blobs/sha256/{d[7:]}", blobs[d]) for d in sorted(blobs)]
    members += [("index.json", index), ("manifest.json", legacy)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def classic_archive(layers: list[bytes]) -> bytes:
    """What a graph-driver store's ``docker save`` writes: ``<id>/layer.tar``, uncompressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        names = [f"{_sha(layer)[7:]}/layer.tar" for layer in layers]
        members = list(zip(names, layers, strict=True))
        members.append(("manifest.json", _json([{"Config": "c.json", "Layers": names}])))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


def flatten(tmp_path: Path, archive: bytes, layers: list[bytes]) -> Path:
    root, spool = tmp_path / "root", tmp_path / "spool"
    root.mkdir()
    spool.mkdir()
    rootfs.flatten_stream(
        _chunks(archive),
        [_sha(layer) for layer in layers],
        root,
        spool=spool,
        epoch=EPOCH,
        progress=lambda *_: None,
    )
    assert list(spool.iterdir()) == []
    return root


LAYERS = [
    _layer({"etc/os": "debian", "data/big": "x" * 200_000}),
    _layer({"etc/os": "debian + hdf5", "usr/bin/h5dump": "#!/bin/sh\n"}),
    _layer({"data/big": "y" * 10, "opt/last": "3"}),
]


@pytest.mark.parametrize(
    ("compression", "nested"),
    [
        (["gzip", "gzip", "gzip"], False),
        (["zstd", "zstd", "zstd"], False),
        (["none", "gzip", "zstd"], True),
        (["gzip", "zstd", "none"], True),
    ],
)
def test_oci_archives_with_compressed_blobs_flatten_by_diff_id(
    tmp_path: Path, compression: list[str], nested: bool
) -> None:
    root = flatten(tmp_path, oci_archive(LAYERS, compression, nested=nested), LAYERS)
    assert (root / "etc" / "os").read_text() == "debian + hdf5"
    assert (root / "data" / "big").read_text() == "y" * 10
    assert (root / "usr" / "bin" / "h5dump").exists()
    assert (root / "opt" / "last").read_text() == "3"


def test_the_classic_layout_still_flattens(tmp_path: Path) -> None:
    root = flatten(tmp_path, classic_archive(LAYERS), LAYERS)
    assert (root / "etc" / "os").read_text() == "debian + hdf5"
    assert (root / "opt" / "last").read_text() == "3"


def test_a_broken_compressed_blob_says_which(tmp_path: Path) -> None:
    good = oci_archive(LAYERS[:1], ["gzip"], nested=False)
    data, _ = _compress(LAYERS[0], "gzip")
    broken = good.replace(data[20:60], b"\0" * 40)
    with pytest.raises(rootfs.RootfsError, match="broken compressed blob blobs/sha256/"):
        flatten(tmp_path, broken, LAYERS[:1])


# the image ID ------------------------------------------------------------------------------------


def test_config_digest_on_each_store() -> None:
    config_digest = dockerapi._config_digest
    assert config_digest({"Id": "sha256:c"}) == "sha256:c"  # overlay2: the ID is the config's
    annotated = {"digest": "sha256:m", "annotations": {"config.digest": "sha256:c"}}
    assert config_digest({"Id": "sha256:m", "Descriptor": annotated}) == "sha256:c"
    # a classic build or a loaded archive on the containerd store: the engine does not say
    assert config_digest({"Id": "sha256:m", "Descriptor": {"digest": "sha256:m"}}) is None


@dataclass
class ContainerdLikeEngine(FakeEngine):
    """Loads archives as the containerd store does: the ID is a manifest digest of its own."""

    def load(self, archive: Path) -> None:
        super().load(archive)
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            [entry] = json.loads(member.read())
        config_digest = "sha256:" + entry["Config"].removesuffix(".json")
        image = Image(
            id=_sha(f"manifest of {config_digest}".encode()),
            tags=tuple(entry["RepoTags"]),
            config_digest=None,
        )
        self.images[image.id] = image
        for tag in image.tags:
            self.images[tag] = image


class FakeMmdebstrap:
    """Stands in for ``subprocess.Popen(mmdebstrap …)``: writes a root filesystem tar."""

    def __init__(self, argv: list[str], **_: object) -> None:
        target = next(a for a in argv if a.endswith(".tar"))
        with open(target, "wb") as handle:  # noqa: PTH123 - a plain path from the argv
            handle.write(_layer({"etc/os-release": "VERSION_CODENAME=bookworm\n"}))
        self.stdout: IO[bytes] = io.BytesIO(b"I: fake mmdebstrap\n")
        self.pid = 0

    def wait(self) -> int:
        return 0


def test_a_bootstrapped_base_gets_the_id_the_engine_gave_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variants = {v.key: v for v in resolve_directory(shipped_dir()).variants}
    base = variants["debian-base:default"]
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "Popen", FakeMmdebstrap)
    engine = ContainerdLikeEngine()
    log = io.StringIO()
    image_id = images.build_bootstrapped(
        engine,
        base,
        log=log,
        progress=lambda _s: None,
        activity=Activity(cancel=threading.Event()),
        epoch=EPOCH,
        no_cache=False,
        ca_url=None,
    )
    loaded = engine.images[base.content_ref]
    assert image_id == loaded.id  # the engine's ID: what tag, results and publish use
    assert f"loaded {base.content_ref} as {loaded.id} (configuration sha256:" in log.getvalue()
    engine.tag(image_id, base.image)  # what the build graph does next: it must not fail
    assert replace(engine.images[base.image], tags=()) == replace(loaded, tags=())


class _PushApi:
    """The Engine API's push stream, as each store writes it."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks

    def push(self, *_: object, **__: object) -> Iterator[dict[str, Any]]:
        return iter(self.chunks)


MANIFEST = "sha256:" + "6e" * 32


@pytest.mark.parametrize(
    "last",
    [
        # graph-driver stores: an aux chunk, after the same status line
        [
            {"status": f"1: digest: {MANIFEST} size: 403"},
            {"aux": {"Tag": "1", "Digest": MANIFEST, "Size": 403}},
        ],
        # the containerd store (Engine 28.5): only the status line
        [{"status": f"1: digest: {MANIFEST} size: 403"}],
    ],
)
def test_the_pushed_digest_is_read_from_either_store(last: list[dict[str, Any]]) -> None:
    engine = dockerapi.DockerEngine.__new__(dockerapi.DockerEngine)
    engine.api = cast("Any", _PushApi([{"status": "Pushed", "id": "f466173f99fd"}, *last]))
    assert engine.push("127.0.0.1:5000/hepml/t", "1", None) == MANIFEST
    engine.api = cast("Any", _PushApi([{"status": "Pushed", "id": "f466173f99fd"}]))
    with pytest.raises(EngineError, match="reported no digest"):
        engine.push("127.0.0.1:5000/hepml/t", "1", None)
