"""The CA bundle server and the build prologue that uses it."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from hepml_images.build.ca import CaServer, read_bundle
from hepml_images.errors import UsageError
from hepml_images.pipeline import resolve_specs
from hepml_images.render import render

if TYPE_CHECKING:
    from pathlib import Path

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_serves_the_bundle_at_its_path_only() -> None:
    with CaServer(PEM, "127.0.0.1") as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:  # noqa: S310
            assert response.read() == PEM
        other = server.url.rsplit("/", 1)[0] + "/etc/passwd"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(other, timeout=10)  # noqa: S310
        caught.value.close()
        assert caught.value.code == 404
    again = CaServer(PEM, "127.0.0.1")
    try:
        assert again.url == server.url or again.url.endswith(server.path)
    finally:
        again.close()


def test_rejects_what_is_not_a_bundle(tmp_path: Path) -> None:
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hello", encoding="utf-8")
    with pytest.raises(UsageError, match="no PEM certificate"):
        read_bundle(not_pem)
    with pytest.raises(UsageError, match="cannot read the CA bundle"):
        read_bundle(tmp_path / "missing.pem")


def test_prologue_only_with_the_option_and_only_in_network_steps() -> None:
    (variant,) = resolve_specs(["debian-python"]).selected
    plain = render(variant.plan).dockerfile
    with_ca = render(variant.plan, ca_bundle=True).dockerfile
    assert "HEPML_CA_URL" not in plain
    assert with_ca.count("ARG HEPML_CA_URL") == 1
    network_runs = sum(1 for step in variant.plan.steps if getattr(step, "network", False))
    assert with_ca.count('if [ -n "${HEPML_CA_URL:-}" ]') == network_runs
    assert with_ca.count("rm -f /tmp/hepml-ca.pem /tmp/hepml-ca.apt") == network_runs
    assert "python3 -m venv /opt/venv\n" in with_ca  # the venv step downloads nothing


def test_prologue_is_valid_shell_and_a_no_op_without_the_argument() -> None:
    (variant,) = resolve_specs(["debian-hdf5"]).selected
    text = render(variant.plan, ca_bundle=True).dockerfile
    run = text.split("RUN ", 1)[1].split("\n\n", 1)[0].replace("\\\n", "")
    prologue = run.split(" && apt-get update", 1)[0]
    done = subprocess.run(
        ["sh", "-c", prologue + ' && echo "${APT_CONFIG:-unset}"'],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unset"
