#!/bin/sh
# Sourced first by every action; nothing to set for images made from OCI images.
