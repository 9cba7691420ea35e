"""A recording fake of the engine interface, for unit tests of the code around the engine.

It keeps images in a dict and a registry as ``{repository:tag: manifest digest}``; every call is
recorded in ``calls`` so that tests can say what the policy did (and did not) ask the engine to do.
Integration tests use the real Docker Engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

from hepml_images.engine import Activity, BuildRequest, EngineError, Image, RunResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FakeEngine:
    """Images by reference and ID; pushes land in ``registry``."""

    where: str = "fake://engine"
    images: dict[str, Image] = field(default_factory=dict)
    registry: dict[str, str] = field(default_factory=dict)
    #: images a pull can fetch, by ``repository:tag`` and ``repository@digest``
    remote: dict[str, Image] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, *call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def names(self, verb: str) -> list[tuple[str, ...]]:
        """The recorded calls of one method (without the verb)."""
        return [c[1:] for c in self.calls if c[0] == verb]

    def add(self, reference: str, labels: Mapping[str, str] | None = None) -> Image:
        """An image present in the engine under ``reference``."""
        image = Image(id=digest_of(reference), tags=(reference,), labels=dict(labels or {}))
        self.images[reference] = self.images[image.id] = image
        return image

    def close(self) -> None:
        self._record("close")

    def version(self) -> Mapping[str, Any]:
        return {"Version": "0.0-fake", "ApiVersion": "1.41"}

    def info(self) -> Mapping[str, Any]:
        return {"Runtimes": {"runc": {}}}

    def image(self, reference: str) -> Image | None:
        self._record("image", reference)
        return self.images.get(reference)

    def tag(self, image_id: str, reference: str) -> None:
        self._record("tag", image_id, reference)
        image = self.images[image_id]
        tagged = replace(image, tags=(*image.tags, reference))
        self.images[reference] = self.images[image_id] = tagged

    def remove_image(self, reference: str, *, force: bool = False) -> None:
        self._record("remove_image", reference, str(force))
        self.images.pop(reference, None)

    def load(self, archive: Path) -> None:
        """Like the engine: the archive's image under its RepoTags, its ID its config digest."""
        self._record("load", str(archive))
        with tarfile.open(archive) as tar:
            manifest = tar.extractfile("manifest.json")
            if manifest is None:
                return  # what the tests of loading bases hand in (a tar without an image)
            (entry,) = json.load(manifest)
            raw = tar.extractfile(entry["Config"])
            assert raw is not None
            data = raw.read()
        config = json.loads(data)
        image = Image(
            id="sha256:" + hashlib.sha256(data).hexdigest(),
            tags=tuple(entry["RepoTags"]),
            labels=dict((config.get("config") or {}).get("Labels") or {}),
            config=dict(config.get("config") or {}),
            layers=tuple(config["rootfs"]["diff_ids"]),
        )
        self.images[image.id] = image
        for tag in image.tags:
            self.images[tag] = image

    def save(self, image_id: str) -> Iterator[bytes]:
        """A ``docker save`` archive of the image: its configuration, no layer content."""
        self._record("save", image_id)
        image = self.images[image_id]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {**image.config, "Labels": dict(image.labels)},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "fake"}],
            }
        ).encode()
        manifest = json.dumps([{"Config": "c.json", "RepoTags": [], "Layers": []}]).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in (("c.json", config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return iter((buffer.getvalue(),))

    def build(
        self,
        request: BuildRequest,
        *,
        log: IO[str],
        progress: Callable[[str], None],
        activity: Activity,
    ) -> str:
        self._record("build", request.tag)
        with tarfile.open(fileobj=io.BytesIO(request.context)) as tar:
            member = tar.extractfile("Dockerfile")
            dockerfile = member.read().decode() if member else ""
        labels = dict(re.findall(r'(io\.hepml\.[a-z.]+)="([^"]*)"', dockerfile))
        image = Image(
            id=digest_of(f"{request.tag} {len(self.calls)}"),
            tags=(request.tag,),
            labels={**labels, **request.labels},
        )
        self.images[request.tag] = self.images[image.id] = image
        return image.id

    def relabel(self, image_id: str, labels: Mapping[str, str], reference: str) -> str:
        self._record("relabel", image_id, reference)
        base = self.images[image_id]
        image = Image(
            id=digest_of(f"{image_id}+{sorted(labels.items())}"),
            tags=(reference,),
            labels={**base.labels, **labels},
        )
        self.images[reference] = self.images[image.id] = image
        return image.id

    def run(
        self,
        image_id: str,
        argv: Sequence[str],
        *,
        gpu: bool,
        timeout_s: int,
        labels: Mapping[str, str],
    ) -> RunResult:
        self._record("run", image_id, *argv)
        return RunResult(code=0, output="", timed_out=False)

    def kill(self, container: str) -> None:
        self._record("kill", container)

    def files(self, image_id: str, directory: str) -> bytes | None:
        self._record("files", image_id, directory)
        return None

    def push(self, repository: str, tag: str, auth: Mapping[str, str] | None) -> str:
        self._record("push", repository, tag)
        image = self.images[f"{repository}:{tag}"]
        manifest = digest_of(f"manifest of {image.id}")
        self.registry[f"{repository}:{tag}"] = manifest
        return manifest

    def offer(self, reference: str, labels: Mapping[str, str]) -> str:
        """An image ``pull`` can fetch as ``reference`` (and by digest); its manifest digest."""
        image = Image(id=digest_of(f"pulled {reference}"), labels=dict(labels))
        manifest = digest_of(f"manifest of {image.id}")
        repository = reference.rsplit(":", 1)[0]
        self.remote[reference] = self.remote[f"{repository}@{manifest}"] = image
        self.registry[reference] = manifest
        return manifest

    def pull(self, reference: str, auth: Mapping[str, str] | None) -> str:
        self._record("pull", reference)
        image = self.remote.get(reference)
        if image is None:
            raise EngineError(f"manifest for {reference} not found: manifest unknown", status=404)
        pulled = replace(image, digests=(reference,))
        self.images[reference] = self.images[image.id] = pulled
        return image.id

    def gateway(self) -> str | None:
        return None
