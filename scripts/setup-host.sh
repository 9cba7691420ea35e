#!/usr/bin/env bash
# Prepare this machine for hepml-images: the tools that build, test and publish images, and a
# Docker Engine that answers.
#
# As root on Debian/Ubuntu (apt-get): install the missing packages (one apt-get update, one
# apt-get install), then start dockerd when no engine answers. Otherwise: check, and print what
# is missing with the command that fixes it. Idempotent: silent when everything is there, one
# line per action taken otherwise.
#
# Exit status: 1 when the Docker Engine or mmdebstrap is missing at the end (nothing builds
# without them), 0 otherwise (other missing tools only disable the stages that use them).
set -euo pipefail

PACKAGES=(
  docker.io mmdebstrap squashfs-tools squashfs-tools-ng siftool skopeo apache2-utils
  docker-registry uidmap git make python3 python3-venv ca-certificates rsync
)
# gitlab-ci-local runs the generated GitLab pipeline in the integration tests (shell executor).
# 4.60.0 is the newest that runs on Debian 12's Node 20 (later ones need Node 22); it needs rsync.
GITLAB_CI_LOCAL=4.60.0
NPM_LOG=/var/log/hepml-setup-npm.log
DOCKERD_LOG=/var/log/hepml-dockerd.log
APT_LOG=/var/log/hepml-setup-apt.log
WAIT_S=60
DEFAULT_SOCKET=/var/run/docker.sock
# The engine the project is built and tested on: Docker Engine 28 with BuildKit (buildx). On
# Debian, whose own docker.io is older (bookworm: 20.10, trixie: 26.1), docker.io and
# docker-buildx come from Debian unstable: a sources entry with a low pin priority (nothing else
# is taken from there), and Acquire::Check-Valid-Until=false because the mirror's unstable
# Release file may be past its Valid-Until date. They keep the release's containerd and runc.
DOCKER_MIN=28
BUILDX_MIN=0.13
SID_SOURCES=/etc/apt/sources.list.d/hepml-sid.sources
SID_PIN=/etc/apt/preferences.d/hepml-sid

say() { printf 'setup-host: %s\n' "$*"; }
warn() { printf 'setup-host: warning: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }
has_apt() { command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; }

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# dockerd from any source: docker.io, docker-ce, a static binary.
have_dockerd() {
  command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || [ -x /usr/bin/dockerd ]
}

# The Unix socket the engine is expected on: DOCKER_HOST's, or the default one.
engine_socket() {
  case "${DOCKER_HOST:-}" in
    "") printf '%s\n' "$DEFAULT_SOCKET" ;;
    unix://*) printf '%s\n' "${DOCKER_HOST#unix://}" ;;
    *) return 1 ;;
  esac
}

# Whether an engine answers: `docker info`, or without the CLI a ping on the socket.
engine_answers() {
  if command -v docker >/dev/null 2>&1; then
    timeout 20 docker info >/dev/null 2>&1
    return
  fi
  local socket
  socket=$(engine_socket) || return 1
  command -v python3 >/dev/null 2>&1 || return 1
  python3 - "$socket" <<'EOF' >/dev/null 2>&1
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    status = s.recv(64).split(b"\r\n", 1)[0].split()
sys.exit(0 if len(status) >= 2 and status[1] == b"200" else 1)
EOF
}

# Packages not installed (docker.io only when no engine and no dockerd is there already; nodejs
# and npm only when no node/npm is on PATH, from any source).
missing_packages() {
  local pkg
  command -v node >/dev/null 2>&1 || printf '%s\n' nodejs
  command -v npm >/dev/null 2>&1 || printf '%s\n' npm
  for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" && continue
    # on Debian the engine comes from install_current_docker
    if [ "$pkg" = docker.io ] && { engine_answers || have_dockerd || is_debian; }; then
      continue
    fi
    printf '%s\n' "$pkg"
  done
}

# Whether apt knows a package (after apt-get update): it has an installation candidate.
apt_knows() {
  local candidate
  candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

install_packages() {
  local missing=() known=() pkg
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  # With package lists present and none of the missing packages in them (siftool on Ubuntu),
  # an update would not help: skip it, so that a re-run stays quick.
  if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    for pkg in "${missing[@]}"; do
      apt_knows "$pkg" && known+=("$pkg")
    done
  fi
  if [ "${#known[@]}" -gt 0 ] || ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    known=()
    say "apt-get update (for: ${missing[*]})"
    if ! apt-get update -qq >"$APT_LOG" 2>&1; then
      tail -n 20 "$APT_LOG" >&2
      warn "apt-get update failed (log: $APT_LOG); installing from the package lists there are"
    fi
  fi
  for pkg in "${missing[@]}"; do
    if apt_knows "$pkg"; then
      known+=("$pkg")
    else
      warn "apt does not know the package $pkg: skipped"
    fi
  done
  [ "${#known[@]}" -eq 0 ] && return 0
  say "installing ${known[*]}"
  if ! apt-get install -y -qq --no-install-recommends "${known[@]}" >>"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    warn "apt-get install failed (log: $APT_LOG)"
  fi
}

# The version of gitlab-ci-local on PATH (empty when there is none).
gitlab_ci_local_version() {
  command -v gitlab-ci-local >/dev/null 2>&1 || return 0
  timeout 30 gitlab-ci-local --version 2>/dev/null | tr -d '[:space:]' || true
}

# gitlab-ci-local at the pinned version, from the npm registry (when missing or another version).
install_gitlab_ci_local() {
  command -v npm >/dev/null 2>&1 || return 0 # reported as missing below
  [ "$(gitlab_ci_local_version)" = "$GITLAB_CI_LOCAL" ] && return 0
  say "installing gitlab-ci-local@$GITLAB_CI_LOCAL (npm)"
  if ! npm install -g --no-fund --no-audit --loglevel=error "gitlab-ci-local@$GITLAB_CI_LOCAL" \
    >"$NPM_LOG" 2>&1; then
    tail -n 20 "$NPM_LOG" >&2
    warn "npm install gitlab-ci-local failed (log: $NPM_LOG)"
  fi
}

# The version of dockerd on PATH ("28.5.2"), empty when there is none.
dockerd_version() {
  local dockerd
  dockerd=$(command -v dockerd 2>/dev/null || true)
  [ -n "$dockerd" ] || { [ -x /usr/sbin/dockerd ] && dockerd=/usr/sbin/dockerd; } || return 0
  "$dockerd" --version 2>/dev/null | sed -n 's/^Docker version \([0-9][0-9.]*\).*/\1/p' || true
}

# The version of the engine that answers ("20.10.24"), empty when none answers.
running_version() {
  command -v docker >/dev/null 2>&1 || return 0
  timeout 20 docker version --format '{{.Server.Version}}' 2>/dev/null | sed 's/[^0-9.].*//' || true
}

# The version of docker buildx ("0.29.1"), empty when there is none.
buildx_version() {
  command -v docker >/dev/null 2>&1 || return 0
  timeout 20 docker buildx version 2>/dev/null |
    sed -n 's/^github.com\/docker\/buildx v\{0,1\}\([0-9][0-9.]*\).*/\1/p' || true
}

at_least() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$2"; }

is_debian() { [ "$(. /etc/os-release 2>/dev/null && printf '%s' "${ID:-}")" = debian ]; }

# The engine (and buildx) from Debian unstable, on Debian, where the engine here is older than
# DOCKER_MIN; never over Docker's own packages (docker-ce) or a newer engine from elsewhere.
install_current_docker() {
  is_debian || return 0
  local have buildx
  have=$(dockerd_version)
  buildx=$(buildx_version)
  if at_least "$have" "$DOCKER_MIN" && at_least "$buildx" "$BUILDX_MIN"; then
    return 0
  fi
  if installed docker-ce || installed moby-engine; then
    at_least "$have" "$DOCKER_MIN" || warn "Docker Engine $have from Docker's packages is older than $DOCKER_MIN: upgrade it (apt-get install docker-ce docker-buildx-plugin); builds use the classic builder until then"
    return 0
  fi
  if [ -n "$have" ] && ! installed docker.io; then
    warn "dockerd $have is not Debian's docker.io: not replaced (builds use the classic builder while it is older than $DOCKER_MIN or lacks buildx)"
    return 0
  fi
  if [ ! -e "$SID_SOURCES" ]; then
    say "adding Debian unstable to apt's sources at pin priority 100, for docker.io and docker-buildx only ($SID_SOURCES, $SID_PIN)"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: sid' 'Components: main' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$SID_SOURCES"
  fi
  if [ ! -e "$SID_PIN" ]; then
    printf '%s\n' 'Package: *' 'Pin: release n=sid' 'Pin-Priority: 100' >"$SID_PIN"
  fi
  say "apt-get update (Debian unstable, for Docker Engine >= $DOCKER_MIN and buildx)"
  if ! apt-get -o Acquire::Check-Valid-Until=false update -qq >>"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    warn "apt-get update failed (log: $APT_LOG)"
    release_docker
    return 0
  fi
  say "installing docker.io, docker-cli and docker-buildx from Debian unstable"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Acquire::Check-Valid-Until=false docker.io/sid docker-cli/sid docker-buildx/sid >>"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    warn "installing docker.io/sid docker-cli/sid docker-buildx/sid failed (log: $APT_LOG)"
    release_docker
    return 0
  fi
  restart_old_engine
}

# Without any engine: the release's own docker.io (classic builder only) rather than none.
release_docker() {
  have_dockerd && return 0
  say "installing the release's docker.io instead (the classic builder only)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
    >>"$APT_LOG" 2>&1 || warn "apt-get install docker.io failed (log: $APT_LOG)"
}

# An engine still running the old binary after the upgrade is stopped (start_engine starts the
# new one). Its containers stop with it; its images stay.
restart_old_engine() {
  local running pid
  running=$(running_version)
  [ -n "$running" ] || return 0
  at_least "$running" "$(dockerd_version)" && return 0
  say "stopping the running Docker Engine $running to start $(dockerd_version)"
  if [ "$(cat /proc/1/comm 2>/dev/null || true)" = systemd ]; then
    systemctl restart docker || true
    return 0
  fi
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  local waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$WAIT_S" ]; do
    sleep 1
    waited=$((waited + 1))
  done
}

# Wait for the engine; give up early when the dockerd we started ($1, optional) has exited.
wait_for_engine() {
  local waited=0 pid="${1:-}"
  until engine_answers; do
    [ "$waited" -ge "$WAIT_S" ] && return 1
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      engine_answers
      return
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

# Start dockerd (systemd when it is PID 1, else in the background) and wait for it to answer.
start_engine() {
  engine_answers && return 0
  engine_socket >/dev/null || return 0 # DOCKER_HOST names a remote engine: not ours to start
  have_dockerd || return 0             # reported as missing below
  local pid="" started=""
  if [ "$(engine_socket)" = "$DEFAULT_SOCKET" ]; then
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "dockerd is running (pid $pid) but does not answer yet: waiting up to ${WAIT_S}s"
  elif [ "$(cat /proc/1/comm 2>/dev/null || true)" = systemd ]; then
    say "starting the Docker Engine: systemctl start docker"
    systemctl start docker || true
  else
    say "starting the Docker Engine: dockerd in the background (log: $DOCKERD_LOG)"
    setsid nohup dockerd </dev/null >"$DOCKERD_LOG" 2>&1 &
    started=$!
  fi
  if ! wait_for_engine "$started"; then
    warn "the Docker Engine did not come up; the last lines of its log:"
    if [ "$(cat /proc/1/comm 2>/dev/null || true)" = systemd ]; then
      journalctl -u docker -n 20 --no-pager >&2 || true
    else
      tail -n 20 "$DOCKERD_LOG" >&2 || true
    fi
    return 1
  fi
}

# How to install a package here (the apt command, or words for other systems).
fix() {
  if has_apt; then
    local sudo=""
    is_root || sudo="sudo "
    if [ "$1" = siftool ] && ! apt_knows siftool; then
      printf 'go install github.com/apptainer/sif/v2/cmd/siftool@latest (not packaged here)'
      return
    fi
    printf '%sapt-get install -y --no-install-recommends %s' "$sudo" "$1"
  else
    printf 'install the package %s (Debian name) with the system package manager' "$1"
  fi
}

# Print what is missing, one line each; return 1 when the engine or mmdebstrap is missing.
check() {
  local status=0 sudo=""
  is_root || sudo="sudo "
  local -A tools=(
    [mmdebstrap]=mmdebstrap [mksquashfs]=squashfs-tools [tar2sqfs]=squashfs-tools-ng
    [siftool]=siftool [skopeo]=skopeo [htpasswd]=apache2-utils [docker-registry]=docker-registry
    [newuidmap]=uidmap [git]=git [make]=make [python3]=python3 [rsync]=rsync [npm]=npm
  )
  local tool
  for tool in mmdebstrap mksquashfs tar2sqfs siftool skopeo htpasswd docker-registry newuidmap \
    git make python3 rsync npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      say "missing: $tool (fix: $(fix "${tools[$tool]}"))"
      [ "$tool" = mmdebstrap ] && status=1
    fi
  done
  if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    say "missing: python3 venv support (fix: $(fix python3-venv))"
  fi
  local found
  found=$(gitlab_ci_local_version)
  if [ "$found" != "$GITLAB_CI_LOCAL" ]; then
    say "missing: gitlab-ci-local $GITLAB_CI_LOCAL${found:+ (found $found)} (fix: ${sudo}npm install -g gitlab-ci-local@$GITLAB_CI_LOCAL)"
  fi
  if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
    say "missing: CA certificates (fix: $(fix ca-certificates))"
  fi
  if engine_answers; then
    local running buildx
    running=$(running_version)
    buildx=$(buildx_version)
    if [ -n "$running" ] && ! at_least "$running" "$DOCKER_MIN"; then
      say "old: Docker Engine $running (builds use the deprecated classic builder; fix: Docker Engine >= $DOCKER_MIN, which this script installs as root on Debian)"
    elif ! at_least "$buildx" "$BUILDX_MIN"; then
      say "missing: docker buildx >= $BUILDX_MIN${buildx:+ (found $buildx)} (builds use the classic builder; fix: $(fix docker-buildx))"
    fi
  else
    status=1
    local socket
    if ! socket=$(engine_socket); then
      say "missing: Docker Engine: none answers at DOCKER_HOST=$DOCKER_HOST (fix: start it there, or unset DOCKER_HOST)"
    elif [ -S "$socket" ] && [ ! -w "$socket" ]; then
      say "missing: Docker Engine access: $socket is not writable for $(id -un) (fix: sudo usermod -aG docker $(id -un), then log in again)"
    elif have_dockerd && is_root; then
      say "missing: a running Docker Engine (dockerd did not come up: see its log above)"
    elif have_dockerd; then
      say "missing: a running Docker Engine (fix: ${sudo}systemctl start docker, or run this script as root)"
    else
      say "missing: Docker Engine (fix: $(fix docker.io), then ${sudo}systemctl start docker; or run this script as root)"
    fi
  fi
  return "$status"
}

main() {
  if is_root && has_apt; then
    install_packages
    install_current_docker
  fi
  if is_root; then
    install_gitlab_ci_local
  fi
  if is_root; then
    start_engine || true # check() reports it
  fi
  check
}

main "$@"
