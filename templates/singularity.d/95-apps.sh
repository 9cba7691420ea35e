#!/bin/sh
# SCIF apps (`apptainer run --app NAME`): put the app's bin and lib directories first.
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    app="/scif/apps/${SINGULARITY_APPNAME}"
    if [ ! -d "$app" ]; then
        echo "this image has no app named ${SINGULARITY_APPNAME}" >&2
        exit 1
    fi
    export SINGULARITY_APPNAME SCIF_APPS=/scif/apps SCIF_APPROOT="$app"
    if [ -d "$app/bin" ]; then
        PATH="$app/bin:$PATH"
    fi
    if [ -d "$app/lib" ]; then
        LD_LIBRARY_PATH="$app/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_LIBRARY_PATH
    fi
    export PATH
fi
