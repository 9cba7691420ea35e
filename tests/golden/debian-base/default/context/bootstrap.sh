#!/bin/sh
# Writes the root filesystem this Dockerfile starts from; hepml-images build runs
# the same command with SOURCE_DATE_EPOCH set, so the tarball is reproducible.
set -eu
exec mmdebstrap --variant=minbase --components=main --include=ca-certificates '--aptopt=Acquire::Check-Valid-Until "false"' '--customize-hook=rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/* "$1/var/log"/*.log "$1/etc/resolv.conf" "$1/etc/hostname"' bookworm rootfs.tar http://deb.debian.org/debian
