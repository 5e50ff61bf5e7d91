#!/usr/bin/env bash
# install.sh builds peerport's `agent` and `broker` from the checkout this
# script lives in and installs them into $PREFIX/bin (default ~/.local/bin).
# Running it again rebuilds and replaces the binaries.
#
# With --service agent|broker it also sets up a systemd service (as root):
# the binaries in /usr/local/bin, the unit from deploy/systemd, the system
# user peerport, and /etc/peerport/KIND.yaml from config.example.yaml when
# there is none. It runs `systemctl daemon-reload` but starts nothing.
set -euo pipefail

usage() {
	cat <<EOF
Usage: $(basename "$0") [--prefix DIR] [--binaries DIR] [--service agent|broker [--root DIR]]

Builds agent and broker from this checkout and installs them into DIR/bin.

Options:
  --prefix DIR     install under DIR (default: \$PREFIX, or \$HOME/.local;
                   with --service: /usr/local)
  --binaries DIR   install the agent and broker found in DIR instead of
                   building them (e.g. from a release archive)
  --service KIND   also set up the systemd service peerport-KIND (agent or
                   broker): its unit, the system user peerport and, if
                   missing, /etc/peerport/KIND.yaml; needs root
  --root DIR       with --service: write every file under DIR instead of /
                   (DESTDIR-style: paths inside the files are those of the
                   target) and only print the useradd, chown and systemctl
                   steps; for packaging and for trying it out
  -h, --help       show this help
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}

prefix_given=
[ -n "${PREFIX:-}" ] && prefix_given=1
service=
root=
binaries=
while [ $# -gt 0 ]; do
	name="${1%%=*}"
	case "$1" in
	--prefix | --service | --root | --binaries)
		[ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
		value="$2"
		shift 2
		;;
	--prefix=* | --service=* | --root=* | --binaries=*)
		value="${1#*=}"
		[ -n "$value" ] || die "$name needs a value"
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
	case "$name" in
	--prefix)
		PREFIX="$value"
		prefix_given=1
		;;
	--service) service="$value" ;;
	--root) root="$value" ;;
	--binaries) binaries="$value" ;;
	esac
done

case "$service" in
"" | agent | broker) ;;
*) die "--service takes agent or broker, not \"$service\"" ;;
esac
[ -z "$root" ] || [ -n "$service" ] || die "--root goes with --service"
if [ -n "$root" ]; then
	mkdir -p "$root"
	root="$(cd "$root" && pwd)"
	[ "$root" != / ] || root=
fi
if [ -n "$service" ] && [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
	die "--service installs system files: run it as root (sudo $0 --service $service), or add --root DIR to stage them"
fi
if [ -z "$prefix_given" ]; then
	if [ -n "$service" ]; then
		PREFIX=/usr/local
	else
		PREFIX="$HOME/.local"
	fi
fi
if [ -n "$service" ]; then
	case "$PREFIX" in
	/*) ;;
	*) die "--prefix must be an absolute path with --service: the unit names it" ;;
	esac
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$src"
[ -f go.mod ] || die "no go.mod next to install.sh in $src; run it from a peerport checkout"
bindir="$root$PREFIX/bin"

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

build_binaries() {
	local need have version
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
	mkdir -p "$bindir"
	go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$bindir/" ./cmd/agent ./cmd/broker
	echo "installed agent and broker ($version) in $bindir" >&2
}

copy_binaries() {
	local b
	for b in agent broker; do
		[ -f "$binaries/$b" ] && [ -x "$binaries/$b" ] || die "--binaries $binaries: no executable $b in it"
	done
	mkdir -p "$bindir"
	for b in agent broker; do
		# Copy, then rename over: a running service keeps its old binary.
		cp "$binaries/$b" "$bindir/.$b.new"
		chmod 0755 "$bindir/.$b.new"
		mv -f "$bindir/.$b.new" "$bindir/$b"
	done
	echo "installed agent and broker from $binaries in $bindir" >&2
}

if [ -n "$binaries" ]; then
	copy_binaries
else
	build_binaries
fi

if [ -z "$service" ]; then
	case ":$PATH:" in
	*":$bindir:"*) ;;
	*)
		echo "$bindir is not on your PATH; add this line to your shell profile:" >&2
		printf 'export PATH="%s:$PATH"\n' "$bindir" >&2
		;;
	esac
	exit 0
fi

# ---------------------------------------------------------------- --service
user=peerport
unit="peerport-$service.service"
confdir=/etc/peerport
conf="$confdir/$service.yaml"

# run CMD...: runs a step that changes the machine, or with --root only
# prints it.
run() {
	if [ -n "$root" ]; then
		echo "  would run:$(printf ' %q' "$@")"
	else
		"$@"
	fi
}

# The unit: ExecStart names the binaries where they were installed.
mkdir -p "$root/etc/systemd/system"
prefix_sed="$(printf '%s' "$PREFIX" | sed 's/[#&\\]/\\&/g')"
sed "s#/usr/local/bin/#$prefix_sed/bin/#g" "deploy/systemd/$unit" >"$root/etc/systemd/system/.$unit.new"
chmod 0644 "$root/etc/systemd/system/.$unit.new"
mv -f "$root/etc/systemd/system/.$unit.new" "$root/etc/systemd/system/$unit"
echo "installed $root/etc/systemd/system/$unit"

# The system user the service runs as.
[ -n "$root" ] && echo "with --root, the machine is left alone:"
if [ -n "$root" ] || ! id -u "$user" >/dev/null 2>&1; then
	nologin=/usr/sbin/nologin
	[ -x "$nologin" ] || nologin=/sbin/nologin
	if [ -n "$root" ] || command -v useradd >/dev/null 2>&1; then
		run useradd --system --user-group --home-dir /var/lib/peerport --no-create-home --shell "$nologin" \
			--comment "peerport service" "$user"
	elif command -v adduser >/dev/null 2>&1; then # busybox (Alpine)
		run addgroup -S "$user"
		run adduser -S -D -H -h /var/lib/peerport -s "$nologin" -G "$user" "$user"
	else
		die "no useradd or adduser to create the system user $user; create it, then run this again"
	fi
	[ -n "$root" ] || echo "created the system user $user"
fi

# The config: the example's document for this service, unless one exists.
# Root owns it, so the service cannot rewrite its own config; the group lets
# the service read it, and nobody else (agent.yaml holds secrets).
mkdir -p "$root$confdir"
chmod 0755 "$root$confdir"
if [ -e "$root$conf" ]; then
	echo "kept the existing $root$conf"
else
	(
		umask 077
		case "$service" in
		# From the agent.yaml banner up to the --- line.
		agent) awk '/^---$/ { exit } /^# -+ agent\.yaml$/ { on = 1 } on' config.example.yaml >"$root$conf.new" ;;
		# Everything after the --- line.
		broker) awk 'on { print } /^---$/ { on = 1 }' config.example.yaml >"$root$conf.new" ;;
		esac
	)
	[ -s "$root$conf.new" ] || die "found no $service document in config.example.yaml"
	chmod 0640 "$root$conf.new"
	mv "$root$conf.new" "$root$conf"
	run chown "root:$user" "$root$conf"
	echo "installed a starter $root$conf (from config.example.yaml; mode 0640, root:$user)"
	if [ "$service" = agent ]; then
		echo "  edit it before starting: the broker URL, shares and connects in it are examples"
	fi
fi

# Tell systemd, but start nothing: the config may need editing first.
if [ -n "$root" ]; then
	run systemctl daemon-reload
elif ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
	echo "note: systemd is not running here (no systemctl, or not booted with systemd), so the unit"
	echo "is installed but not loaded; on a systemd machine the next steps would be:"
	echo "  systemctl daemon-reload"
	echo "  systemctl enable --now $unit"
	exit 0
else
	systemctl daemon-reload
fi
echo
echo "To start $unit now and at every boot:"
echo "  systemctl enable --now $unit"
case "$service" in
agent)
	echo "Then: journalctl -u $unit -f    (logs)"
	echo "      systemctl reload $unit    (after editing $conf)"
	;;
broker)
	echo "Then: journalctl -u $unit    (the first line the broker prints is its URL, for agent login)"
	echo "Open TCP 7000 and TCP+UDP 3478-3479 in the firewall."
	;;
esac
