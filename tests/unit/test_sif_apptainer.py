"""The code around Apptainer: what we ask it to do, and how its answers are read.

Apptainer is not packaged for Debian 12, so these tests put a stand-in ``apptainer`` script on
the path that records its arguments and acts like the real command's interface (``build`` writes
the target, ``exec`` runs the command). What Apptainer itself does is not under test here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from hepml_images.sif import check, make
from hepml_images.smoke.checks import Check
from hepml_images.smoke.runner import Status

if TYPE_CHECKING:
    from pathlib import Path

FAKE = """#!/bin/sh
python3 - "$@" <<'PY'
import json, os, sys
call = {"argv": sys.argv[1:], "epoch": os.environ.get("SOURCE_DATE_EPOCH")}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(call) + "\\n")
PY
if [ -n "${FAKE_FAIL:-}" ]; then echo "FATAL: $FAKE_FAIL" >&2; exit 3; fi
case "$1" in
    build) printf 'SIF' > "$3" ;;
    exec) shift; while [ "${1#--}" != "$1" ]; do shift; done; shift; exec "$@" ;;
esac
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    script = tmp_path / "apptainer"
    script.write_text(FAKE)
    script.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    return str(script), log


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_build_asks_for_the_tested_image_with_the_epoch(
    fake: tuple[str, Path], tmp_path: Path
) -> None:
    command, log = fake
    target = tmp_path / "out.sif"
    seen: list[tuple[str, int, int]] = []
    make._apptainer_build(
        command, "hepml/x:abc-tested", target, epoch=42, progress=lambda *a: seen.append(a)
    )
    assert _calls(log) == [
        {
            "argv": ["build", "--force", str(target), "docker-daemon:hepml/x:abc-tested"],
            "epoch": "42",
        }
    ]
    assert target.read_bytes() == b"SIF"
    assert seen[-1][1] == seen[-1][2]


def test_a_failed_build_says_why_and_how_to_do_without(
    fake: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, _ = fake
    monkeypatch.setenv("FAKE_FAIL", "no space left on device")
    with pytest.raises(make.SifFailed, match="no space left on device") as caught:
        make._apptainer_build(
            command, "hepml/x:t", tmp_path / "o.sif", epoch=1, progress=lambda *_: None
        )
    assert caught.value.hint is not None
    assert "--builder native" in caught.value.hint


def test_checks_run_with_cleanenv_and_gpu_checks_with_nv(
    fake: tuple[str, Path], tmp_path: Path
) -> None:
    command, log = fake
    sif = tmp_path / "image.sif"
    run = check.apptainer_runner(command, sif)
    plain = run(Check(name="echo", component="c", argv=("sh", "-c", "echo inside")))
    gpu = run(Check(name="gpu", component="gpu", argv=("sh", "-c", "exit 0"), gpu=True))
    failed = run(Check(name="bad", component="c", argv=("sh", "-c", "echo broken >&2; exit 4")))
    assert plain.status is Status.PASSED
    assert "inside" in plain.output
    assert gpu.status is Status.PASSED
    assert failed.status is Status.FAILED
    assert failed.message == "exit 4: broken"
    argvs = [c["argv"] for c in _calls(log)]
    assert argvs[0] == ["exec", "--cleanenv", str(sif), "sh", "-c", "echo inside"]
    assert argvs[1][:4] == ["exec", "--cleanenv", "--nv", str(sif)]
    assert "--nv" not in argvs[2]


def test_a_hanging_check_times_out(fake: tuple[str, Path], tmp_path: Path) -> None:
    command, _ = fake
    run = check.apptainer_runner(command, tmp_path / "image.sif")
    result = run(Check(name="hang", component="c", argv=("sleep", "30"), timeout_s=1))
    assert result.status is Status.FAILED
    assert result.message == "timed out after 1 s"
