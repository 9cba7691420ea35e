"""Building images in a real Docker Engine: graph order, skipping, bootstrapping, clean-up."""
