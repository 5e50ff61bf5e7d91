package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
)

// How connections end, with the real binaries: an abnormal end reaches the
// application as a reset, both ways, and no end leaves a stream behind.

// openStreams sums what a state dir's agents still count open: forwarded
// connections per share and per forward, and streams per peer session.
func openStreams(st agent.Status) (n int64) {
	for _, a := range st.Agents {
		for _, s := range a.Shares {
			n += s.Streams
		}
		for _, c := range a.Connects {
			n += c.Streams
		}
		for _, p := range a.Peers {
			n += int64(p.Streams)
		}
	}
	return n
}

// rssKiB is a process's resident set, from /proc.
func rssKiB(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// endlessServer writes to every connection until it fails, and reports how
// each one's reads ended (the peer's side of a server that only writes).
func endlessServer(t testing.TB, write bool) (string, chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ends := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if write {
					_, err := io.Copy(c, zeros{})
					ends <- err
					return
				}
				_, err := io.Copy(io.Discard, c)
				ends <- err
			}()
		}
	}()
	return ln.Addr().String(), ends
}

func wantReset(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s ended with %v, want ECONNRESET (a clean end would pass a cut transfer off as complete)", what, err)
	}
}

// TestKilledSharerResetsApp: the sharing agent is killed (SIGKILL) in the
// middle of a download; the connector's application must read ECONNRESET,
// not the EOF of a complete transfer (what `socat -u ... > file` took as a
// clean end, exiting 0 with a short file).
func TestKilledSharerResetsApp(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	target, _ := endlessServer(t, true)
	sharer, ticket := w.share(target)
	_, addr := w.connect(ticket)
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
		t.Fatalf("download before the kill: %v", err)
	}
	sharer.cmd.Process.Signal(syscall.SIGKILL)
	_, err = io.Copy(io.Discard, c)
	wantReset(t, "the connector's application's download", err)
}

// TestKilledConnectorResetsTarget is the mirror: the connecting agent is
// killed in the middle of an upload; the shared service must see a reset.
func TestKilledConnectorResetsTarget(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	target, ends := endlessServer(t, false)
	_, ticket := w.share(target)
	conn, addr := w.connect(ticket)
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Minute))
	if _, err := io.CopyN(c, zeros{}, 4<<20); err != nil {
		t.Fatalf("upload before the kill: %v", err)
	}
	conn.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-ends:
		wantReset(t, "the target's read of the upload", err)
	case <-time.After(time.Minute):
		t.Fatal("the target's connection did not end within a minute of the kill")
	}
}

// TestKilledAgentResetsItsOwnSide: an agent killed mid-transfer resets
// the connection it held itself, to the application on its own host: the
// kernel closes a killed process's sockets, and that would be a FIN (a
// complete-looking transfer) but for the linger the pipe keeps at 0 until
// it ends cleanly. The sharer's target reads an upload, the connector's
// application a download.
func TestKilledAgentResetsItsOwnSide(t *testing.T) {
	t.Parallel()
	for _, kill := range []string{"sharer", "connector"} {
		t.Run(kill, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			target, ends := endlessServer(t, kill == "connector")
			sharer, ticket := w.share(target)
			conn, addr := w.connect(ticket)
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			victim := sharer
			if kill == "connector" {
				victim = conn
				if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
					t.Fatalf("download before the kill: %v", err)
				}
			} else if _, err := io.CopyN(c, zeros{}, 4<<20); err != nil {
				t.Fatalf("upload before the kill: %v", err)
			}
			victim.cmd.Process.Signal(syscall.SIGKILL)
			if kill == "connector" {
				_, err = io.Copy(io.Discard, c)
				wantReset(t, "the application's download", err)
				return
			}
			select {
			case err := <-ends:
				wantReset(t, "the target's read of the upload", err)
			case <-time.After(time.Minute):
				t.Fatal("the target's connection did not end within a minute of the kill")
			}
		})
	}
}

// TestIperf3Parallel runs real iperf3 -P 8 through the tunnel, forward,
// reverse and both ways, on the direct and the relayed path. iperf3 ends
// its parallel streams abruptly (RST); once it is done, both agents must
// count no open connection and no stream, and the sharer's Go heap, idle
// again, must come back near what it was before the runs. (The heap, from
// its metrics, not RSS: the test binaries are race-built, and the race
// detector's shadow memory is never given back.)
func TestIperf3Parallel(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed")
	}
	for _, path := range []string{agent.PathDirect, agent.PathRelay} {
		t.Run(path, func(t *testing.T) {
			port := freePort(t)
			w := newWorld(t)
			metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			cfg := filepath.Join(t.TempDir(), "agent.yaml")
			writeFile(t, cfg, fmt.Sprintf("metrics_listen: %s\nshares:\n  - name: iperf\n    target: 127.0.0.1:%d\n    path: %s\n", metrics, port, path))
			sharer, tickets := upTickets(t, w.sharerDir, cfg, 1)
			_, addr := w.connect(tickets["iperf"])
			_, lport, _ := net.SplitHostPort(addr)
			// The baseline is an idle sharer with its peer session up.
			eventually(t, 30*time.Second, "the peer session", func() bool {
				st := status(t, w.sharerDir)
				return len(st.Agents) == 1 && len(st.Agents[0].Peers) == 1
			})
			time.Sleep(time.Second)
			idleHeap, idleRSS := heapInuse(t, metrics), rssKiB(t, sharer.cmd.Process.Pid)
			for _, mode := range [][]string{nil, {"-R"}, {"--bidir"}} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				srv := iperf3Server(ctx, t, port)
				args := append([]string{"-c", "127.0.0.1", "-p", lport, "-P", "8", "-t", "2"}, mode...)
				out, err := exec.CommandContext(ctx, "iperf3", args...).CombinedOutput()
				if err != nil {
					cancel()
					t.Fatalf("iperf3 %v: %v\n%s", mode, err, out)
				}
				serr := srv.Wait()
				cancel()
				if serr != nil {
					t.Fatalf("iperf3 server after %v: %v", mode, serr)
				}
			}
			busyHeap, busyRSS := heapInuse(t, metrics), rssKiB(t, sharer.cmd.Process.Pid)
			var left [2]int64
			eventually(t, 30*time.Second, "no open streams on either side", func() bool {
				left = [2]int64{openStreams(status(t, w.sharerDir)), openStreams(status(t, w.connDir))}
				return left == [2]int64{}
			})
			// The idle release (agent/release.go) collects what the windows held.
			const slack = 4 << 20
			var after int64
			deadline := time.Now().Add(40 * time.Second)
			for after = heapInuse(t, metrics); after > idleHeap+slack && time.Now().Before(deadline); after = heapInuse(t, metrics) {
				time.Sleep(time.Second)
			}
			t.Logf("sharer heap in use: idle %d KiB, right after the runs %d KiB, idle again %d KiB (RSS of the race-built binary %d, %d, %d KiB)",
				idleHeap>>10, busyHeap>>10, after>>10, idleRSS, busyRSS, rssKiB(t, sharer.cmd.Process.Pid))
			if after > idleHeap+slack {
				t.Errorf("sharer heap %d KiB once idle again, against %d KiB before the runs", after>>10, idleHeap>>10)
			}
		})
	}
}

// iperf3Server starts a one-test iperf3 server on port and waits until it
// listens. One server per run: a long-lived one re-opens its listener
// between tests, and a client that comes in that gap (sooner through a
// tunnel, which ends the last test's connections a little later than
// loopback would) is refused or told the server is busy.
func iperf3Server(ctx context.Context, t *testing.T, port int) *exec.Cmd {
	t.Helper()
	srv := exec.CommandContext(ctx, "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	eventually(t, 10*time.Second, "iperf3 listening", func() bool { return listening(t, port) })
	return srv
}

// listening reports whether a socket listens on 127.0.0.1:port, from
// /proc/net/tcp: a test connection would be taken for an iperf3 client.
func listening(t testing.TB, port int) bool {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatalf("listening sockets: %v", err)
	}
	want := fmt.Sprintf("0100007F:%04X 00000000:0000 0A", port)
	return strings.Contains(string(b), want)
}

// heapInuse is an agent's Go heap in use, from its Prometheus metrics.
func heapInuse(t testing.TB, metrics string) int64 {
	return int64(metric(t, metrics, "go_memstats_heap_inuse_bytes"))
}

// metric is one unlabelled sample of an agent's Prometheus metrics.
func metric(t testing.TB, metrics, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the agent's metrics", name)
	return 0
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
