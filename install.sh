#!/usr/bin/env bash
# install.sh builds peerport's `agent` and `broker` from the checkout this
# script lives in and installs them into $PREFIX/bin (default ~/.local/bin).
# Running it again rebuilds and replaces the binaries.
set -euo pipefail

usage() {
	cat <<EOF
Usage: $(basename "$0") [--prefix DIR]

Builds agent and broker from this checkout and installs them into DIR/bin.

Options:
  --prefix DIR   install under DIR (default: \$PREFIX, or \$HOME/.local)
  -h, --help     show this help
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}

PREFIX="${PREFIX:-$HOME/.local}"
while [ $# -gt 0 ]; do
	case "$1" in
	--prefix)
		[ $# -ge 2 ] && [ -n "$2" ] || die "--prefix needs a directory"
		PREFIX="$2"
		shift 2
		;;
	--prefix=*)
		PREFIX="${1#--prefix=}"
		[ -n "$PREFIX" ] || die "--prefix needs a directory"
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown argument: $1"
		;;
	esac
done

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$src"
[ -f go.mod ] || die "no go.mod next to install.sh in $src; run it from a peerport checkout"

# version_ge A B: whether Go version A (1.26, 1.26.8, 1.26rc1) is at least B.
# Numeric fields are compared one by one; a pre-release (rc, beta) counts as
# older than the release it leads to.
version_ge() {
	local a b i x y
	IFS=. read -r -a a <<<"$1"
	IFS=. read -r -a b <<<"$2"
	for i in 0 1 2; do
		x="${a[i]:-0}"
		y="${b[i]:-0}"
		# 26rc1 -> 26 and a pre-release flag
		local xp=0 yp=0
		if [[ "$x" =~ ^([0-9]+)[a-z] ]]; then
			x="${BASH_REMATCH[1]}"
			xp=1
		fi
		if [[ "$y" =~ ^([0-9]+)[a-z] ]]; then
			y="${BASH_REMATCH[1]}"
			yp=1
		fi
		[[ "$x" =~ ^[0-9]+$ && "$y" =~ ^[0-9]+$ ]] || return 1
		if ((10#$x != 10#$y)); then
			((10#$x > 10#$y))
			return
		fi
		if ((xp != yp)); then
			((xp < yp))
			return
		fi
	done
	return 0
}

need="$(awk '$1 == "go" { print $2; exit }' go.mod)"
[ -n "$need" ] || die "go.mod has no go line"

command -v go >/dev/null 2>&1 || die "go not found on PATH; install Go $need or newer from https://go.dev/dl/"
# GOTOOLCHAIN=local: ask the installed go itself, instead of letting it fetch
# the toolchain go.mod names.
have="$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || true)"
[ -n "$have" ] || have="$(go version 2>/dev/null | awk '{ print $3 }')"
have="${have#go}"
have="${have%% *}" # "1.26.8 X:nocoverageredesign" -> "1.26.8"
[ -n "$have" ] || die "cannot tell the version of $(command -v go); install Go $need or newer from https://go.dev/dl/"
version_ge "$have" "$need" || die "Go $have is too old, this checkout needs Go $need or newer (https://go.dev/dl/)"

version="$(git describe --always --dirty 2>/dev/null || echo dev)"
bindir="$PREFIX/bin"
mkdir -p "$bindir"
go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$bindir/" ./cmd/agent ./cmd/broker

echo "installed agent and broker ($version) in $bindir"
case ":$PATH:" in
*":$bindir:"*) ;;
*)
	echo "$bindir is not on your PATH; add this line to your shell profile:"
	printf 'export PATH="%s:$PATH"\n' "$bindir"
	;;
esac
