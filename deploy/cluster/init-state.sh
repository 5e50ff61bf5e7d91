#!/bin/sh
# Seeds the state volume that every broker node of compose.yaml mounts with
# one broker identity (docs/cluster.md#provisioning-the-identity): broker.key,
# token and turn.secret, made by running `broker` once. A volume that already
# holds them is left as it is, so the URL survives every `compose up`. Either
# way it prints the URL agents log in with, naming every node, on stdout.
#
# Environment (compose.yaml sets them):
#   STATE          the volume (default /state)
#   BROKER         the broker binary (default /out/broker, the Dockerfile's build stage)
#   AGENT_ADDRS    the nodes' public HOST:PORTs, comma-separated, for the URL
#   OWNER          uid:gid the brokers run as (default 65532:65532, distroless nonroot)
set -eu

state=${STATE:-/state}
broker=${BROKER:-/out/broker}
owner=${OWNER:-65532:65532}
files="broker.key token turn.secret"

have=0
for f in $files; do
	if [ -s "$state/$f" ]; then have=$((have + 1)); fi
done
if [ "$have" -ne 0 ] && [ "$have" -ne 3 ]; then
	echo "init-state: $state holds some of $files but not all: restore the missing ones from your backup, or remove the volume to make a new identity (agents then need the new URL)" >&2
	exit 1
fi

tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -m 0700 "$tmp/state"
if [ "$have" -eq 3 ]; then
	# Run the broker on a copy, only to print the URL of this identity.
	for f in $files; do cp "$state/$f" "$tmp/state/$f"; done
fi

# A broker on a free loopback port, without STUN and TURN, creates what is
# missing and prints its URL; the URL's token and pin are every node's.
"$broker" --state-dir "$tmp/state" --listen 127.0.0.1:0 --no-stun --no-turn >"$tmp/url" 2>"$tmp/log" &
pid=$!
i=0
until [ -s "$tmp/url" ]; do
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "init-state: broker exited before printing its URL:" >&2
		cat "$tmp/log" >&2
		exit 1
	fi
	i=$((i + 1))
	if [ "$i" -gt 200 ]; then
		echo "init-state: broker printed no URL in 20 s:" >&2
		cat "$tmp/log" >&2
		exit 1
	fi
	sleep 0.1
done
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=

if [ "$have" -eq 0 ]; then
	for f in $files; do
		if [ ! -s "$tmp/state/$f" ]; then
			echo "init-state: broker made no $f" >&2
			exit 1
		fi
	done
	# Copy, then rename: a node never sees half a file.
	for f in $files; do
		cp "$tmp/state/$f" "$state/.$f.new"
		chmod 0600 "$state/.$f.new"
	done
	for f in $files; do mv "$state/.$f.new" "$state/$f"; done
	echo "init-state: made a new broker identity in $state; back up $files" >&2
else
	echo "init-state: $state already holds the broker identity; left as it is" >&2
fi
if [ "$(id -u)" = 0 ]; then
	chown "$owner" "$state"
	for f in $files; do chown "$owner" "$state/$f"; done
fi
chmod 0700 "$state"

# pp://TOKEN@127.0.0.1:PORT#PIN -> pp://TOKEN@ADDRS#PIN
url=$(head -n 1 "$tmp/url")
rest=${url#pp://}
token=${rest%%@*}
case $rest in
*'#'*) pin="#${rest#*#}" ;;
*) pin= ;;
esac
if [ -n "${AGENT_ADDRS:-}" ]; then
	echo "init-state: agents log in with the URL below (agent login URL)" >&2
	echo "pp://$token@$AGENT_ADDRS$pin"
else
	echo "init-state: no AGENT_ADDRS; the URL below names this run's loopback address: put the nodes' HOST:PORTs in its place" >&2
	echo "$url"
fi
