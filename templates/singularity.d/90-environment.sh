#!/bin/sh
# The %environment section of a definition file would go here; images made from OCI images carry
# their environment in 10-docker2singularity.sh.
