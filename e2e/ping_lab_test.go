package e2e

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// pongLine is one try `agent ping` answered: the peer, the path and its
// address, the round trip.
var pongLine = regexp.MustCompile(`^pong from ([a-z2-7]{12}) \((direct|relay turn|relay broker) ([0-9.:\[\]a-f]+)\) in [0-9.]+ms$`)

// TestLabPing: `agent ping` in the NAT lab, against a peer reached over a
// punched path (cone-cone) and one only a relay reaches (the sharer behind
// a symmetric NAT): through the running connect by ticket, from the
// sharer by share name, and with the ticket from a state dir with no agent
// running (ping connects by itself). -c N gives N pong lines, each naming
// the path, then the verdict on a direct path.
func TestLabPing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		topo    natlab.Topology // sharer on a, connector on b
		path    string          // what the session rides, and every pong line says
		verdict string
	}{
		{"cone-cone direct", natlab.Pair(natlab.BehindCone, natlab.BehindCone), "direct", "direct connection established"},
		{"symmetric-cone relay", natlab.Pair(natlab.BehindSym, natlab.BehindCone), "relay", "no direct path: relayed via "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newLabWorld(t, tc.topo)
			a, b := w.lab.Host("a"), w.lab.Host("b")
			sharer := w.startCmd(a, agentCmd("--state-dir", w.sharerDir, "share", w.echoIn(a), "--name", "echo"))
			ticket := w.firstLine(sharer)
			conn := w.startCmd(b, agentCmd("--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:18080", "--metrics-listen", "9101"))
			w.firstLine(conn)
			p := w.onlyPath(w.connDir, tc.path)
			sharerID := p.Peer[:12]
			connID := w.onlyPath(w.sharerDir, tc.path).Peer[:12]

			ping := func(t *testing.T, host *natlab.Node, dir, target string, n int) []string {
				t.Helper()
				ctx, cancel := context.WithTimeout(w.ctx, 90*time.Second)
				defer cancel()
				out, err := host.RunCommand(ctx, agentCmd("--state-dir", dir, "ping", "-c", strconv.Itoa(n), "-i", "300ms", target))
				if err != nil {
					t.Fatalf("agent ping %.24s on %s: %v\n%s", target, host, err, out)
				}
				t.Logf("agent ping on %s:\n%s", host, out)
				return strings.Split(strings.TrimSpace(string(out)), "\n")
			}
			// check: n pong lines from peer, all on path when it is given,
			// then the statistics and the verdict.
			check := func(t *testing.T, lines []string, n int, peer, path string) {
				t.Helper()
				if len(lines) != n+2 {
					t.Fatalf("%d lines, want %d pongs, the statistics and the verdict:\n%s", len(lines), n, strings.Join(lines, "\n"))
				}
				for _, l := range lines[:n] {
					m := pongLine.FindStringSubmatch(l)
					switch {
					case m == nil:
						t.Errorf("line %q is not a pong", l)
					case m[1] != peer:
						t.Errorf("line %q: want a pong from %s", l, peer)
					case path != "" && !strings.HasPrefix(m[2], path):
						t.Errorf("line %q: want the %s path", l, path)
					}
				}
				if want := "--- " + peer + ": " + strconv.Itoa(n) + " tries, " + strconv.Itoa(n) + " pongs, 0% lost; rtt min/avg/max "; !strings.HasPrefix(lines[n], want) {
					t.Errorf("statistics %q, want %q...", lines[n], want)
				}
				if !strings.HasPrefix(lines[n+1], tc.verdict) {
					t.Errorf("verdict %q, want %q", lines[n+1], tc.verdict)
				}
			}

			t.Run("metrics say the path", func(t *testing.T) {
				// --metrics-listen 9101 means 127.0.0.1:9101, inside b.
				c, err := b.Dial(w.ctx, "tcp", "127.0.0.1:9101")
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprint(c, "GET /metrics HTTP/1.0\r\n\r\n")
				m, _ := io.ReadAll(c)
				for _, want := range []string{
					`peerport_agent_connect_path{listen="127.0.0.1:18080",path="` + tc.path + `",peer="` + sharerID + `",share="echo"} 1`,
					`peerport_agent_peer_path{path="` + tc.path + `",peer="` + sharerID + `",relay_kind="` + p.RelayKind + `",role="connector"} 1`,
				} {
					if !strings.Contains(string(m), want) {
						t.Errorf("connector's metrics lack %s", want)
					}
				}
			})
			t.Run("unknown target", func(t *testing.T) {
				out, err := b.RunCommand(w.ctx, agentCmd("--state-dir", w.connDir, "ping", "-c", "1", "nosuch"))
				if err == nil || !strings.Contains(err.Error(), `no peer session to "nosuch"`) {
					t.Errorf("agent ping nosuch: %v, stdout %q; want exit 1 saying there is no such peer", err, out)
				}
			})
			t.Run("running connect, by ticket", func(t *testing.T) {
				check(t, ping(t, b, w.connDir, ticket, 3), 3, sharerID, tc.path)
			})
			t.Run("sharer, by share name", func(t *testing.T) {
				check(t, ping(t, a, w.sharerDir, "echo", 2), 2, connID, tc.path)
			})
			t.Run("ticket, no agent running", func(t *testing.T) {
				// A new session: under --path auto it may start relayed and
				// move to direct under the pings; its last pong decides.
				path := ""
				if tc.path == "relay" {
					path = "relay"
				}
				lines := ping(t, b, t.TempDir(), ticket, 3)
				check(t, lines, 3, sharerID, path)
				if tc.path == "direct" && !strings.Contains(lines[2], "(direct ") {
					t.Errorf("last pong %q: want the direct path", lines[2])
				}
			})
		})
	}
}
