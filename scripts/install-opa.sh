#!/usr/bin/env bash
# Put the pinned OPA at $BIN_DIR/opa unless an OPA of that version is already there or on PATH.
# Order: an existing binary of the pinned version; a build from the Go module proxy (go install,
# or a two-line wrapper module when go install refuses); the release binary checked against its
# published SHA-256. Otherwise stop and say how to install OPA.
set -euo pipefail

OPA_VERSION="${OPA_VERSION:?}"
BIN_DIR="${BIN_DIR:?}"
# sha256 of opa_linux_amd64_static for the pinned release (published beside the binary).
OPA_SHA256="${OPA_SHA256:-}"
mkdir -p "$BIN_DIR"
BIN_DIR="$(cd "$BIN_DIR" && pwd)"
want="${OPA_VERSION#v}"

have_version() { "$1" version 2>/dev/null | awk '/^Version:/ {print $2}'; }

if [[ -x "$BIN_DIR/opa" && "$(have_version "$BIN_DIR/opa")" == "$want" ]]; then
  exit 0
fi
if command -v opa >/dev/null 2>&1 && [[ "$(have_version "$(command -v opa)")" == "$want" ]]; then
  ln -sf "$(command -v opa)" "$BIN_DIR/opa"
  exit 0
fi

if command -v go >/dev/null 2>&1; then
  echo "building OPA $OPA_VERSION from the Go module proxy (first time only, a few minutes) ..." >&2
  if GOBIN="$BIN_DIR" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/opa@$OPA_VERSION"; then
    exit 0
  fi
  echo "go install refused the module; building through a wrapper module" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  printf 'package main\n\nimport "github.com/open-policy-agent/opa/cmd"\n\nfunc main() { cmd.Execute() }\n' > "$work/main.go"
  (cd "$work" && go mod init wardgate-opa >/dev/null 2>&1 \
     && go get "github.com/open-policy-agent/opa@$OPA_VERSION" \
     && go build -o "$BIN_DIR/opa" .) && exit 0
fi

if command -v curl >/dev/null 2>&1; then
  url="https://github.com/open-policy-agent/opa/releases/download/$OPA_VERSION/opa_linux_amd64_static"
  echo "no Go toolchain: downloading $url" >&2
  if [[ -z "$OPA_SHA256" ]]; then
    OPA_SHA256="$(curl -fsSL --max-time 30 "$url.sha256" 2>/dev/null | awk '{print $1}')" || true
  fi
  tmp="$(mktemp)"
  if [[ -n "$OPA_SHA256" ]] && curl -fsSL --max-time 120 -o "$tmp" "$url" \
     && echo "$OPA_SHA256  $tmp" | sha256sum -c - >/dev/null; then
    install -m 0755 "$tmp" "$BIN_DIR/opa"
    rm -f "$tmp"
    exit 0
  fi
  rm -f "$tmp"
fi

cat >&2 <<MSG
error: could not install OPA $OPA_VERSION.
Install it yourself and re-run: either a Go toolchain (https://go.dev/dl/) so that
  go install github.com/open-policy-agent/opa@$OPA_VERSION
works, or the release binary from https://github.com/open-policy-agent/opa/releases/tag/$OPA_VERSION
placed on PATH or at $BIN_DIR/opa.
MSG
exit 1
