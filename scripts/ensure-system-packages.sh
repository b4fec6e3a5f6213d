#!/usr/bin/env bash
# Installs the Debian packages the project needs when they are missing: Java and Maven (the local Kafka
# broker), and for the tests PostgreSQL (the sink's PostgreSQL store) and Chromium with its driver (the browser
# test), and for the Docker deployment and its tests Docker's engine, debootstrap (a base image where no registry
# answers) and Go (Docker Compose v2, built once). Usage: scripts/ensure-system-packages.sh run|test|docker
set -euo pipefail
purpose=${1:-test}
missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if [[ $purpose == test ]]; then
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || missing+=(golang-go)  # compose-go loads docker-compose.yml
fi
if [[ $purpose == test || $purpose == docker ]] && [[ $(id -u) -eq 0 ]]; then
  # Only as root: who is not root uses the Docker they have, and the compose tests say why they skip without it.
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || missing+=(golang-go)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "installing missing system packages: ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  apt_get=(apt-get)
elif command -v sudo >/dev/null; then
  apt_get=(sudo apt-get)
else
  echo "error: these Debian packages are needed: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
  exit 1
fi
"${apt_get[@]}" update -qq
DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
