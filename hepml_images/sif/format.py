"""The SIF container format (spec version ``01``), written and read in plain Python.

In: a list of :class:`SifObject` (definition file, labels, a squashfs root file system …) given
as bytes or as paths, an image ID and a creation time. Out: a SIF file whose bytes depend on those
inputs only — there is no clock and no randomness here — laid out the way the reference Go
library (``github.com/sylabs/sif/v2``, used by Apptainer and SingularityCE) lays out a new image,
so that ``siftool`` and the runtimes read it. :func:`read_sif` goes the other way and returns the
global header and the descriptors of the objects in use; :func:`copy_object` streams one object's
bytes out.

The module is pure apart from reading and writing the files and file objects it is handed. Object
data is copied in chunks, so a root file system of a few gigabytes never sits in memory.

Layout of a new image (all integers little-endian, structures packed without padding)::

    0       global header, 128 bytes
    128     zeros up to the descriptor table
    4096    descriptor table: 48 slots of 585 bytes, the first n in use, the rest zero
    32176   data: the objects in order, each placed at the next multiple of its alignment
            (partitions: 4096; other objects: none), zeros in the gaps; the file ends where the
            last object ends
"""

from __future__ import annotations

import enum
import os
import struct
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# --- Constants of the format -----------------------------------------------------------------

#: The launch script Apptainer puts at the head of an image it builds: it makes the file
#: executable through ``run-singularity``.
APPTAINER_LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
#: The specification version this module writes and accepts.
SIF_VERSION = "01"
#: Slots in the descriptor table of a new image (``DescriptorsTotal``), as the reference creates.
DEFAULT_DESCRIPTOR_CAPACITY = 48
#: Where the descriptor table of a new image starts.
DESCRIPTORS_OFFSET = 4096
#: The alignment the reference gives partition objects unless told otherwise.
PARTITION_ALIGNMENT = 4096
#: The object group that objects join unless told otherwise.
DEFAULT_GROUP = 1
#: Set on every group field on disk ("this is a group ID"); also set on a link to a group.
GROUP_FLAG = 0xF000_0000
#: Largest group or object ID that fits beside :data:`GROUP_FLAG`.
MAX_ID = 0x0FFF_FFFF

_MAGIC = b"SIF_MAGIC\x00"
_LAUNCH_LEN = 32
_NAME_LEN = 128
_EXTRA_LEN = 384
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

# launch script, magic, version, arch, uuid; then created, modified, descriptors free, total,
# offset and size, data offset and size
_HEADER = struct.Struct("<32s10s3s3s16s8q")
# data type, in use, object ID, group, link; offset, size, size with the gap before the object,
# created, modified, uid, gid; name; type-specific extra
_DESCRIPTOR = struct.Struct("<i?III7q128s384s")
# the start of the extra area of a partition: file system type, partition type, arch code
_PARTITION_EXTRA = struct.Struct("<ii3s")

#: Size of the global header in bytes.
HEADER_SIZE = _HEADER.size
#: Size of one descriptor slot in bytes.
DESCRIPTOR_SIZE = _DESCRIPTOR.size

_CHUNK_SIZE = 4 * 1024 * 1024


class DataType(enum.IntEnum):
    """Kinds of data object."""

    DEFFILE = 0x4001
    ENV_VAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


class FsType(enum.IntEnum):
    """File systems a partition object can hold."""

    SQUASH = 1
    SQUASHFS = 1  # the same value: an alias
    EXT3 = 2
    IMMUTABLE_ARCHIVE = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5


class PartType(enum.IntEnum):
    """Roles of a partition object; a runtime boots from the one ``PRIMSYS`` partition."""

    SYSTEM = 1
    PRIMSYS = 2
    DATA = 3
    OVERLAY = 4


# Go/OCI architecture names (the ``architecture`` of an OCI image config) and their SIF codes.
_ARCH_CODES: dict[str, str] = {
    "386": "01",
    "amd64": "02",
    "arm": "03",
    "arm64": "04",
    "ppc64": "05",
    "ppc64le": "06",
    "mips": "07",
    "mipsle": "08",
    "mips64": "09",
    "mips64le": "10",
    "s390x": "11",
    "riscv64": "12",
    "loong64": "13",
}
_ARCH_NAMES = {code: name for name, code in _ARCH_CODES.items()}
_UNKNOWN_ARCH_CODE = "00"
# kernel (uname -m) spellings people write by mistake, mapped to the name they meant
_UNAME_SPELLINGS = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
    "armhf": "arm",
}


class SifError(ValueError):
    """A file that is not a readable SIF image, or inputs that cannot become one."""


def arch_code(goarch: str) -> str:
    """The two-digit SIF code of a Go/OCI architecture name such as ``amd64`` or ``arm64``.

    Raises :class:`SifError` (a ``ValueError``) for a name without a code.
    """
    code = _ARCH_CODES.get(goarch)
    if code is not None:
        return code
    known = ", ".join(sorted(_ARCH_CODES))
    meant = _UNAME_SPELLINGS.get(goarch.lower())
    hint = f" (did you mean {meant!r}?)" if meant else ""
    raise SifError(f"architecture {goarch!r} has no SIF code{hint}; known architectures: {known}")


def _stored_arch(arch: str) -> str:
    """The code to store for ``arch``, a Go/OCI name or already a known SIF code."""
    return arch if arch in _ARCH_NAMES else arch_code(arch)


def arch_name(code: str) -> str | None:
    """The Go/OCI architecture name of a SIF code, or ``None`` for ``00`` and unknown codes."""
    return _ARCH_NAMES.get(code)


# --- Inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PartitionInfo:
    """What a partition object holds: its file system, its role and its CPU architecture.

    ``arch`` is a Go/OCI architecture name (``amd64``); the writer also takes a SIF code that
    :func:`arch_code` gave (``02``). The reader gives the name, or ``"unknown"`` for a code this
    module does not know.
    """

    fs_type: int = FsType.SQUASH
    part_type: int = PartType.PRIMSYS
    arch: str


@dataclass(frozen=True, kw_only=True)
class SifObject:
    """One data object to write.

    ``source`` is the data itself or the path of a file to stream it from. ``group_id`` is the
    object group (``None``: no group); ``link_id`` the ID of the object this one refers to (``0``:
    none; IDs are 1..n in the order objects are given). ``alignment`` is the byte boundary the data
    starts on; ``None`` means the reference's default, 4096 for partitions and none otherwise.
    Partition objects need ``partition``; other objects must not have it.
    """

    data_type: int
    source: Path | bytes
    name: str = ""
    group_id: int | None = DEFAULT_GROUP
    link_id: int = 0
    partition: PartitionInfo | None = None
    alignment: int | None = None


# --- Outputs of the reader -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """One data object in use, as its descriptor records it.

    ``group_id`` is ``0`` when the object is in no group. ``link_id`` is ``0`` when it links to
    nothing; ``link_is_group`` tells an object ID from a group ID.
    """

    id: int
    data_type: int
    group_id: int
    link_id: int
    link_is_group: bool
    offset: int
    size: int
    size_with_padding: int
    created: int
    modified: int
    name: str
    partition: PartitionInfo | None


@dataclass(frozen=True, kw_only=True)
class SifInfo:
    """The global header of an image and its descriptors in use, in table order.

    ``arch`` is the Go/OCI name of the primary partition's architecture (``None`` when the header
    records none); ``arch_code`` the code as stored.
    """

    launch_script: str
    version: str
    arch: str | None
    arch_code: str
    id: uuid.UUID
    created: int
    modified: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int
    descriptors: tuple[Descriptor, ...]


# --- Writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """An object with its place in the file decided."""

    obj: SifObject
    object_id: int
    offset: int
    size: int
    gap: int


def _next_aligned(offset: int, alignment: int) -> int:
    if alignment <= 0 or offset % alignment == 0:
        return offset
    return offset + alignment - offset % alignment


def _source_size(obj: SifObject) -> int:
    if isinstance(obj.source, bytes):
        return len(obj.source)
    try:
        return obj.source.stat().st_size
    except OSError as error:
        raise SifError(f"cannot read the data of object {obj.name!r}: {error}") from error


def _check_int(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise SifError(f"{what} {value} is outside {low}..{high}")


def _check_objects(objects: Sequence[SifObject], capacity: int) -> None:
    if len(objects) > capacity:
        raise SifError(f"{len(objects)} objects do not fit in {capacity} descriptors")
    primaries = 0
    for number, obj in enumerate(objects, start=1):
        what = f"object {number}" + (f" ({obj.name!r})" if obj.name else "")
        _check_int(obj.data_type, _INT32_MIN, _INT32_MAX, f"{what}: data type")
        if len(obj.name.encode()) > _NAME_LEN:
            raise SifError(f"{what}: the name is longer than {_NAME_LEN} bytes in UTF-8")
        if obj.group_id is not None:
            _check_int(obj.group_id, 1, MAX_ID, f"{what}: group ID")
        _check_int(obj.link_id, 0, len(objects), f"{what}: linked object ID")
        if obj.alignment is not None:
            _check_int(obj.alignment, 0, _INT32_MAX, f"{what}: alignment")
        if obj.data_type == DataType.PARTITION:
            if obj.partition is None:
                raise SifError(f"{what}: a partition object needs partition info")
            _check_int(obj.partition.fs_type, _INT32_MIN, _INT32_MAX, f"{what}: fs type")
            _check_int(obj.partition.part_type, _INT32_MIN, _INT32_MAX, f"{what}: part type")
            _stored_arch(obj.partition.arch)
            if obj.partition.part_type == PartType.PRIMSYS:
                primaries += 1
        elif obj.partition is not None:
            raise SifError(f"{what}: only partition objects carry partition info")
    if primaries > 1:
        raise SifError(f"an image has at most one primary partition, {primaries} were given")


def _place(objects: Sequence[SifObject], data_offset: int) -> list[_Placed]:
    placed: list[_Placed] = []
    end = data_offset
    for number, obj in enumerate(objects, start=1):
        alignment = obj.alignment
        if alignment is None:
            alignment = PARTITION_ALIGNMENT if obj.data_type == DataType.PARTITION else 0
        offset = _next_aligned(end, alignment)
        size = _source_size(obj)
        placed.append(_Placed(obj, number, offset, size, offset - end))
        end = offset + size
    return placed


def _descriptor_bytes(item: _Placed, created: int) -> bytes:
    obj = item.obj
    extra = b""
    if obj.partition is not None:
        extra = _PARTITION_EXTRA.pack(
            obj.partition.fs_type,
            obj.partition.part_type,
            _stored_arch(obj.partition.arch).encode("ascii") + b"\x00",
        )
    group = GROUP_FLAG | (obj.group_id or 0)
    return _DESCRIPTOR.pack(
        obj.data_type,
        True,  # noqa: FBT003 - the "in use" flag of the slot
        item.object_id,
        group,
        obj.link_id,
        item.offset,
        item.size,
        item.gap + item.size,
        created,
        created,
        0,
        0,
        obj.name.encode(),
        extra,
    )


def _header_bytes(  # noqa: PLR0913 - one argument per header field
    *,
    launch_script: bytes,
    arch: str,
    sif_id: uuid.UUID,
    created: int,
    capacity: int,
    used: int,
    data_offset: int,
    data_size: int,
) -> bytes:
    return _HEADER.pack(
        launch_script,
        _MAGIC,
        SIF_VERSION.encode("ascii") + b"\x00",
        arch.encode("ascii") + b"\x00",
        sif_id.bytes,
        created,
        created,
        capacity - used,
        capacity,
        DESCRIPTORS_OFFSET,
        capacity * DESCRIPTOR_SIZE,
        data_offset,
        data_size,
    )


def _write_zeros(target: BinaryIO, count: int) -> None:
    while count > 0:
        step = min(count, _CHUNK_SIZE)
        target.write(bytes(step))
        count -= step


def _write_data(target: BinaryIO, item: _Placed) -> None:
    source = item.obj.source
    if isinstance(source, bytes):
        target.write(source)
        return
    left = item.size
    with source.open("rb") as stream:
        while left > 0:
            chunk = stream.read(min(left, _CHUNK_SIZE))
            if not chunk:
                break
            target.write(chunk)
            left -= len(chunk)
        if left or stream.read(1):
            raise SifError(f"{source} changed size while it was being written into the image")


def _write_image(
    target: BinaryIO, header: bytes, placed: Sequence[_Placed], *, created: int, capacity: int
) -> None:
    target.write(header)
    _write_zeros(target, DESCRIPTORS_OFFSET - HEADER_SIZE)
    target.writelines(_descriptor_bytes(item, created) for item in placed)
    _write_zeros(target, (capacity - len(placed)) * DESCRIPTOR_SIZE)
    for item in placed:
        _write_zeros(target, item.gap)
        _write_data(target, item)


def write_sif(  # noqa: PLR0913 - the image's few knobs, all keyword-only
    target: BinaryIO | Path,
    objects: Sequence[SifObject],
    *,
    sif_id: uuid.UUID,
    created: int,
    launch_script: str = APPTAINER_LAUNCH_SCRIPT,
    descriptor_capacity: int = DEFAULT_DESCRIPTOR_CAPACITY,
) -> None:
    """Write a new SIF image holding ``objects``, in that order, with IDs 1..n.

    ``created`` (seconds since the epoch) is the creation and modification time of the header and
    of every descriptor; descriptor UID and GID are 0. The header's architecture is that of the
    primary partition, if any. Nothing else goes in, so the same inputs give the same bytes.

    A file object ``target`` is written sequentially from where it stands (it need not seek); if
    writing fails, what was written stays. A path is created (mode 0755 before the umask, like the
    reference) and removed again if writing fails. Raises :class:`SifError` for inputs that cannot
    make an image, before anything is written.
    """
    _check_int(created, _INT64_MIN, _INT64_MAX, "created time")
    _check_int(descriptor_capacity, 1, MAX_ID, "descriptor capacity")
    script = launch_script.encode()
    if len(script) >= _LAUNCH_LEN:
        raise SifError(f"the launch script must be shorter than {_LAUNCH_LEN} bytes")
    _check_objects(objects, descriptor_capacity)

    data_offset = DESCRIPTORS_OFFSET + descriptor_capacity * DESCRIPTOR_SIZE
    placed = _place(objects, data_offset)
    data_end = placed[-1].offset + placed[-1].size if placed else data_offset
    arch = _UNKNOWN_ARCH_CODE
    for obj in objects:
        if obj.partition is not None and obj.partition.part_type == PartType.PRIMSYS:
            arch = _stored_arch(obj.partition.arch)
    header = _header_bytes(
        launch_script=script,
        arch=arch,
        sif_id=sif_id,
        created=created,
        capacity=descriptor_capacity,
        used=len(placed),
        data_offset=data_offset,
        data_size=data_end - data_offset,
    )

    if not isinstance(target, Path):
        _write_image(target, header, placed, created=created, capacity=descriptor_capacity)
        return
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            _write_image(stream, header, placed, created=created, capacity=descriptor_capacity)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


# --- Reading ---------------------------------------------------------------------------------


def _text(field: bytes) -> str:
    return field.rstrip(b"\x00").decode("utf-8", errors="replace")


def _read_exactly(stream: BinaryIO, offset: int, size: int, what: str) -> bytes:
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise SifError(f"the file ends inside the {what} (wanted {size} bytes at {offset})")
    return data


def _known(kind: type[enum.IntEnum], value: int) -> int:
    """``value`` as a member of ``kind`` when it is one (for readable reprs), else as it is."""
    try:
        return kind(value)
    except ValueError:
        return value


def _parse_descriptor(raw: bytes) -> Descriptor | None:
    (
        data_type,
        used,
        object_id,
        group,
        link,
        offset,
        size,
        size_with_padding,
        created,
        modified,
        _uid,
        _gid,
        name,
        extra,
    ) = _DESCRIPTOR.unpack(raw)
    if not used:
        return None
    partition = None
    if data_type == DataType.PARTITION:
        fs_type, part_type, code = _PARTITION_EXTRA.unpack_from(extra)
        partition = PartitionInfo(
            fs_type=_known(FsType, fs_type),
            part_type=_known(PartType, part_type),
            arch=arch_name(_text(code)) or "unknown",
        )
    return Descriptor(
        id=object_id,
        data_type=_known(DataType, data_type),
        group_id=group & ~GROUP_FLAG,
        link_id=link & ~GROUP_FLAG,
        link_is_group=link & GROUP_FLAG == GROUP_FLAG,
        offset=offset,
        size=size,
        size_with_padding=size_with_padding,
        created=created,
        modified=modified,
        name=_text(name),
        partition=partition,
    )


def _read_info(stream: BinaryIO) -> SifInfo:
    head = stream.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[_LAUNCH_LEN : _LAUNCH_LEN + len(_MAGIC)] != _MAGIC:
        raise SifError("not a SIF image: the SIF_MAGIC signature is missing")
    (
        launch_script,
        _magic,
        version,
        arch,
        raw_id,
        created,
        modified,
        free,
        total,
        descriptors_offset,
        descriptors_size,
        data_offset,
        data_size,
    ) = _HEADER.unpack(head)
    if _text(version) != SIF_VERSION:
        raise SifError(f"SIF version {_text(version)!r} is not supported (only {SIF_VERSION!r} is)")
    if total < 0 or descriptors_offset < 0 or descriptors_size < total * DESCRIPTOR_SIZE:
        raise SifError(
            f"corrupt SIF header: {total} descriptors do not fit in {descriptors_size} bytes"
            f" at offset {descriptors_offset}"
        )
    table = _read_exactly(stream, descriptors_offset, total * DESCRIPTOR_SIZE, "descriptor table")
    slots = (
        table[start : start + DESCRIPTOR_SIZE] for start in range(0, len(table), DESCRIPTOR_SIZE)
    )
    descriptors = tuple(d for slot in slots if (d := _parse_descriptor(slot)) is not None)
    return SifInfo(
        launch_script=_text(launch_script),
        version=_text(version),
        arch=arch_name(_text(arch)),
        arch_code=_text(arch),
        id=uuid.UUID(bytes=raw_id),
        created=created,
        modified=modified,
        descriptors_free=free,
        descriptors_total=total,
        descriptors_offset=descriptors_offset,
        descriptors_size=descriptors_size,
        data_offset=data_offset,
        data_size=data_size,
        descriptors=descriptors,
    )


@contextmanager
def _opened(source: BinaryIO | Path) -> Iterator[BinaryIO]:
    if not isinstance(source, Path):
        yield source
        return
    try:
        stream = source.open("rb")
    except OSError as error:
        raise SifError(f"cannot open {source}: {error}") from error
    with stream:
        yield stream


def read_sif(source: BinaryIO | Path) -> SifInfo:
    """The global header and the descriptors in use of the SIF image in ``source``.

    A file object must be seekable; it is read from offset 0 whatever its position. Raises
    :class:`SifError` for a file that is not a SIF image, has another spec version or is cut short.
    """
    with _opened(source) as stream:
        stream.seek(0)
        try:
            return _read_info(stream)
        except SifError as error:
            if isinstance(source, Path):
                raise SifError(f"{source}: {error}") from error
            raise


def primary_partition(info: SifInfo) -> Descriptor:
    """The descriptor of the primary system partition, the one a runtime starts from."""
    for descriptor in info.descriptors:
        if descriptor.partition is not None and descriptor.partition.part_type == PartType.PRIMSYS:
            return descriptor
    kinds = ", ".join(_describe(d) for d in info.descriptors) or "no objects at all"
    raise SifError(f"the SIF image {info.id} has no primary system partition ({kinds})")


def _describe(descriptor: Descriptor) -> str:
    try:
        kind = DataType(descriptor.data_type).name.lower()
    except ValueError:
        kind = f"type {descriptor.data_type:#x}"
    return f"object {descriptor.id}: {kind}"


def copy_object(source: BinaryIO | Path, descriptor: Descriptor, target: BinaryIO) -> int:
    """Stream the bytes of the object ``descriptor`` from the image ``source`` into ``target``.

    Returns the number of bytes copied, which is the object's size; raises :class:`SifError` if
    the image ends before the object does.
    """
    with _opened(source) as stream:
        stream.seek(descriptor.offset)
        left = descriptor.size
        while left > 0:
            chunk = stream.read(min(left, _CHUNK_SIZE))
            if not chunk:
                raise SifError(
                    f"the image ends {left} bytes before the end of object {descriptor.id}"
                )
            target.write(chunk)
            left -= len(chunk)
    return descriptor.size
