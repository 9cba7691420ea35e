"""Image plans → Dockerfile and Singularity definition text. Pure.

``render(plan)`` returns both files and the build context. The templates in ``templates/`` lay
out each format; ``writers`` translates the plan's semantics into each format in one place.
"""

from hepml_images.render.writers import Rendered, render

__all__ = ["Rendered", "render"]
