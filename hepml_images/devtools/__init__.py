"""Tools for developing and testing hepml-images: not part of the command line."""
