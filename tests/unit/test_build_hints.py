"""Hints for failed build steps, read from the step's output."""

from __future__ import annotations

import pytest

from hepml_images.build.hints import for_log


def test_apt_version_not_found_says_to_relock_the_spec() -> None:
    lines = [
        "Reading package lists...",
        "E: Version '1.10.8+repack1-1' for 'libhdf5-dev' was not found",
    ]
    hint = for_log(lines, "my-hdf5")
    assert hint is not None
    assert "libhdf5-dev 1.10.8+repack1-1" in hint
    assert "`hepml-images lock my-hdf5`" in hint
    assert "snapshot" in hint


@pytest.mark.parametrize(
    ("line", "wanted"),
    [
        (
            "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
            "`hepml-images lock s --check`",
        ),
        (
            "ERROR: No matching distribution found for tensorflow==9.9.9",
            "no tensorflow==9.9.9",
        ),
        (
            (
                "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate"
                " verify failed: self-signed certificate in certificate chain"
            ),
            "--ca-bundle",
        ),
        ("curl: (60) SSL certificate problem: unable to get local issuer", "--ca-bundle"),
    ],
)
def test_known_failures(line: str, wanted: str) -> None:
    hint = for_log(["step output", line, "exit code 1"], "s")
    assert hint is not None
    assert wanted in hint


def test_the_failure_nearest_the_end_wins() -> None:
    lines = [
        "WARNING: Retrying after connection broken by SSLError(certificate verify failed)",
        "ERROR: No matching distribution found for h5py==0.0.1",
    ]
    hint = for_log(lines, "s")
    assert hint is not None
    assert "h5py==0.0.1" in hint


def test_an_unknown_failure_has_no_hint() -> None:
    assert for_log(["make: *** [all] Error 2"], "s") is None
    assert for_log([], "s") is None


def test_quoted_log_text_is_cut() -> None:
    hint = for_log([f"E: Version '{'9' * 500}' for 'p' was not found"], "s")
    assert hint is not None
    assert "9" * 500 not in hint
    assert "…" in hint
