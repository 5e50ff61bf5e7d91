package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/secure"
)

func TestEcho64MiB(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	if !strings.HasPrefix(ticket, secure.TicketPrefix) {
		t.Fatalf("first stdout line of share is %q, want a ticket", ticket)
	}
	_, addr := w.connect(ticket)
	echoCheck(t, addr, 64<<20)

	for _, dir := range []string{w.sharerDir, w.connDir} {
		st := status(t, dir)
		if len(st.Agents) != 1 || len(st.Agents[0].Peers) != 1 {
			t.Fatalf("status of %s: want one agent with one peer, got %+v", dir, st)
		}
		p := st.Agents[0].Peers[0]
		if p.Path != "direct" || p.BytesIn < 64<<20 || p.BytesOut < 64<<20 {
			t.Errorf("peer status %+v: want path direct and 64 MiB each way", p)
		}
		if ap, err := netip.ParseAddrPort(p.Remote); err != nil || !ap.Addr().Unmap().IsLoopback() {
			t.Errorf("peer remote %s: loopback tests must stay on loopback (PEERPORT_CANDIDATES)", p.Remote)
		}
	}
}

func TestHundredConcurrentConnections(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	_, addr := w.connect(ticket)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			echoCheck(t, addr, 256<<10)
		}()
	}
	wg.Wait()
}

// TestHalfClose: the client shuts its write side; the service answers only
// after it has read everything, and the answer arrives in full.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const answer = 4 << 20
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				n, _ := io.Copy(h, c) // until the client's FIN
				fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
				io.CopyN(c, zeros{}, answer)
			}()
		}
	}()
	w := newWorld(t)
	_, ticket := w.share(ln.Addr().String())
	_, addr := w.connect(ticket)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	msg := []byte(strings.Repeat("half-close ", 1000))
	c.Write(msg)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %x\n", len(msg), sha256.Sum256(msg))
	if !strings.HasPrefix(string(got), want) || len(got) != len(want)+answer {
		t.Fatalf("answer: %d bytes starting %q, want %d starting %q", len(got), got[:min(len(got), 80)], len(want)+answer, want)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestTargetDown: a refused target closes only that local connection, with
// a logged reason; the session stays and serves the next connection.
func TestTargetDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now

	w := newWorld(t)
	sharer, ticket := w.share(target)
	_, addr := w.connect(ticket)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read from a forward to a dead target: %d, %v; want EOF", n, err)
	}
	c.Close()
	eventually(t, 10*time.Second, "sharer logs the unreachable target", func() bool {
		return contains(sharer.stderr.String(), "target unreachable")
	})
	before := status(t, w.connDir).Agents[0].Peers[0]

	echoServerAt(t, target) // the service comes up
	echoCheck(t, addr, 1<<20)
	after := status(t, w.connDir).Agents[0].Peers[0]
	if !after.Since.Equal(before.Since) {
		t.Errorf("peer session was replaced (since %v -> %v); it should survive a dead target", before.Since, after.Since)
	}
}

func echoServerAt(t testing.TB, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port %s was taken meanwhile: %v", addr, err)
	}
	serveEcho(t, ln)
}

// TestEmbeddedBroker: no login, no broker: `agent share` embeds one.
func TestEmbeddedBroker(t *testing.T) {
	t.Parallel()
	sharer := start(t, "sharer", bins.agent, "--state-dir", t.TempDir(), "share", echoServer(t),
		"--embedded-listen", "127.0.0.1:0", "--public-addr", "127.0.0.1")
	ticket := sharer.firstLine()
	conn := start(t, "connector", bins.agent, "--state-dir", t.TempDir(), "connect", ticket, "--listen", "127.0.0.1:0")
	echoCheck(t, conn.firstLine(), 4<<20)
}

// TestDefaultListenPort: without --listen the connector listens on the
// shared port, or a free one when that is taken.
func TestDefaultListenPort(t *testing.T) {
	t.Parallel()
	target := echoServer(t) // the target's port is taken here, so expect a free port
	w := newWorld(t)
	_, ticket := w.share(target)
	p := start(t, "connector", bins.agent, "--state-dir", w.connDir, "connect", ticket)
	addr := p.firstLine()
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("listen address %q, want 127.0.0.1:PORT", addr)
	}
	if _, tport, _ := net.SplitHostPort(target); port == tport {
		t.Fatalf("listened on the taken port %s", port)
	}
	if n, _ := strconv.Atoi(port); n == 0 {
		t.Fatalf("port %q", port)
	}
	echoCheck(t, addr, 1<<20)
}

// TestTwoAgentsOneMachine: separate state dirs are separate identities, and
// status of each dir shows only its own agent.
func TestTwoAgentsOneMachine(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	idA, _, errA := run(t, bins.agent, "--state-dir", w.sharerDir, "id")
	idB, _, errB := run(t, bins.agent, "id", "--state-dir", w.connDir) // global flags go after the subcommand too
	if errA != nil || errB != nil || idA == idB {
		t.Fatalf("ids %q %q (%v %v): want two different identities", idA, idB, errA, errB)
	}
	_, ticket := w.share(echoServer(t))
	_, addr := w.connect(ticket)
	echoCheck(t, addr, 1<<20)
	for dir, id := range map[string]string{w.sharerDir: idA, w.connDir: idB} {
		st := status(t, dir)
		if len(st.Agents) != 1 || st.Agents[0].ID != strings.TrimSpace(id) {
			t.Errorf("status of %s: %+v, want only agent %s", dir, st.Agents, id)
		}
	}
}

// TestOneStateDirManyProcesses: one identity in several processes — two
// `agent share` and an `agent connect` to each, all from one state dir, as
// one user in three terminals does — all keep working side by side.
func TestOneStateDirManyProcesses(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, t1 := w.share(echoServer(t), "--name", "one")
	_, t2 := w.share(echoServer(t), "--name", "two")
	for _, tk := range []string{t1, t2} {
		p := start(t, "connector", bins.agent, "--state-dir", w.sharerDir, "connect", tk, "--listen", "0")
		addr := p.firstLine()
		echoCheck(t, addr, 1<<20)
	}
	_, addr := w.connect(t1) // and from another state dir
	echoCheck(t, addr, 1<<20)
}

// TestUpTwoConnectsOneSharer: two forwards to two shares of one sharer,
// neither with a listen address, share one peer session and each learns
// its own share's port.
func TestUpTwoConnectsOneSharer(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a, b := echoServer(t), echoServer(t)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "shares:\n  - name: a\n    target: "+a+"\n  - name: b\n    target: "+b+"\n")
	sh := start(t, "sharer", bins.agent, "--state-dir", w.sharerDir, "up", "-c", cfg)
	var tickets []string
	eventually(t, 20*time.Second, "two tickets", func() bool {
		tickets = ticketRE.FindAllString(sh.stderr.String(), -1)
		return len(tickets) == 2
	})
	cfg2 := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg2, "connects:\n  - ticket: "+strings.TrimPrefix(tickets[0], "ticket: ")+"\n  - ticket: "+strings.TrimPrefix(tickets[1], "ticket: ")+"\n")
	start(t, "connector", bins.agent, "--state-dir", w.connDir, "up", "-c", cfg2)
	var st []agent.ConnectStatus
	eventually(t, 20*time.Second, "both forwards listening", func() bool {
		s := status(t, w.connDir)
		if len(s.Agents) != 1 {
			return false
		}
		st = st[:0]
		for _, c := range s.Agents[0].Connects {
			if c.Listen != "" {
				st = append(st, c)
			}
		}
		return len(st) == 2
	})
	for _, c := range st {
		echoCheck(t, c.Listen, 1<<20)
	}
	if peers := status(t, w.connDir).Agents[0].Peers; len(peers) != 1 {
		t.Errorf("%d peer sessions to one sharer, want 1", len(peers))
	}
}
