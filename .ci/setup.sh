#!/usr/bin/env bash
# What the tests and checks need from the machine, each script timed: the services the tests
# talk to, the SMTP and S3-protocol servers, Chromium and the web journeys' packages, the
# OpenID provider's packages, promtool,
# podman and hadolint for the images, then the offline checks of the production compose file
# and the Kubernetes overlays. .ci/run starts it beside the first compilers: it waits on apt and
# the network, not on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

run() { # what script
  local began=$SECONDS
  echo "== $1 (.ci/$2)"
  # shellcheck disable=SC2086 # "script [argument]"
  bash .ci/$2
  echo "== $1: $((SECONDS - began)) s"
}
run "services the tests need (installed and started if missing; fails if one stays down)" services.sh
run "SMTP server for the mail tests (aiosmtpd)" smtp.sh
run "S3-protocol server for the picture tests (moto)" s3.sh
run "headless browser and the web journeys' npm packages" browser.sh
run "OpenID provider for the sign-in tests (oidc-provider)" oidc.sh
run "promtool for the alert-rule tests" promtool.sh
run "podman, runc and hadolint for the images" "images.sh tools"
run "production compose file (docker-compose config, compose JSON schema)" compose.sh
run "Kubernetes overlays (kustomize render, kubernetes-validate)" k8s.sh
