"""Benchmark: size of the default TensorFlow CPU image against the size of what is in it.

The image size (what `docker images` shows: all layers) is compared with the size of the
files a container of it sees (`du` over its root filesystem). The difference is what layers
carry but nobody sees: package-manager and pip caches, files deleted or replaced in a later
layer. Target (issue 3): at most 1.05x.

Usage: python -m bench.image_size   (builds the default environment first if needed)
"""

from __future__ import annotations

import docker

from bench.common import hepml, timed
from hepml_images.pipeline import DEFAULT_SELECTION, DEFAULT_SPECS, resolve_specs


def main() -> None:
    """Print image size, visible size, their ratio and the biggest layers."""
    timed(hepml("build", "--no-test"))
    variant = resolve_specs(list(DEFAULT_SPECS), list(DEFAULT_SELECTION)).selected[0]
    client = docker.from_env(timeout=600)
    image = client.images.get(variant.content_ref)
    image_id = str(image.id)
    size = int(image.attrs["Size"])
    output = client.containers.run(
        image_id,
        ["du", "-sxb", "/"],
        remove=True,
        network_disabled=True,
    )
    visible = int(output.decode().split()[0])
    print(f"image {variant.content_ref} ({image_id[7:19]})")
    print(f"image size (all layers):     {size / 1e6:9.1f} MB")
    print(f"files in the container (du): {visible / 1e6:9.1f} MB")
    print(f"ratio image/visible: {size / visible:.4f}x (target <= 1.05x)")
    print("largest layers:")
    layers = sorted(image.history(), key=lambda h: -int(h.get("Size", 0)))[:5]
    for layer in layers:
        created_by = " ".join(str(layer.get("CreatedBy", "")).split())
        print(f"  {int(layer['Size']) / 1e6:9.1f} MB  {created_by[:90]}")


if __name__ == "__main__":
    main()
