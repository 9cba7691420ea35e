#!/bin/sh
# `--nv` and `--rocm` bind the host's driver libraries into /.singularity.d/libs: put it on the
# library path, after the image's own directories.
LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/.singularity.d/libs"
if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
