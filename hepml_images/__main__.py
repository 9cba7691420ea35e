"""``python -m hepml_images``: the same as the ``hepml-images`` command."""

from hepml_images.noop import entry

entry()
