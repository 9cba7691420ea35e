"""hepml-images: reproducible container images for HEP machine learning.

The pipeline is spec → resolve → render → build → test → publish; ``hepml_images.pipeline``
wires the stages together.
"""

__version__ = "0.1.0"
