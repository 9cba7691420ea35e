#!/bin/bash
# Set up the ATLAS AnalysisBase release environment, then run the command.
source /home/atlas/release_setup.sh
# The release setup puts its own directories first; a venv goes before them again.
if [ -n "${VIRTUAL_ENV:-}" ]; then PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH; fi
exec "$@"
