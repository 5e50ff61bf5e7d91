package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/proto"
)

// slowEcho sends n random bytes through addr over about d, reads the echo
// concurrently, and returns a channel that yields nil when it came back
// intact. It lets a test do something while a transfer is in flight.
func slowEcho(t *testing.T, addr string, n int, d time.Duration) <-chan error {
	done := make(chan error, 1)
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(d + 2*time.Minute))
	const chunk = 64 << 10
	pause := d / time.Duration(n/chunk)
	sent := sha256.New()
	go func() {
		buf := make([]byte, chunk)
		for left := n; left > 0; left -= chunk {
			rand.Read(buf)
			if _, err := c.Write(buf); err != nil {
				return
			}
			sent.Write(buf)
			time.Sleep(pause)
		}
		c.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		defer c.Close()
		got := sha256.New()
		m, err := io.Copy(got, c)
		switch {
		case err != nil:
			done <- fmt.Errorf("read echo after %d bytes: %w", m, err)
		case m != int64(n) || string(got.Sum(nil)) != string(sent.Sum(nil)):
			done <- fmt.Errorf("echo of %d bytes came back as %d bytes, or altered", n, m)
		default:
			done <- nil
		}
	}()
	return done
}

func waitErr(t *testing.T, ch <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: not done after %v", what, d)
	}
}

// upTickets starts `agent up --tickets` and collects NAME TICKET lines.
func upTickets(t *testing.T, dir, cfg string, want int) (*proc, map[string]string) {
	p := start(t, "sharer", bins.agent, "--state-dir", dir, "up", "-c", cfg, "--tickets")
	tickets := map[string]string{}
	for len(tickets) < want {
		f := strings.Fields(p.firstLine())
		if len(f) != 2 {
			t.Fatalf("ticket line %q: want NAME TICKET", f)
		}
		tickets[f[0]] = f[1]
	}
	return p, tickets
}

func agentID(t *testing.T, dir string) string {
	out, stderr, err := run(t, bins.agent, "--state-dir", dir, "id")
	if err != nil {
		t.Fatalf("id: %v %s", err, stderr)
	}
	return strings.TrimSpace(out)
}

// listens returns the listen address of each forward of the agent in dir, by share.
func listens(t *testing.T, dir string, want int) map[string]agent.ConnectStatus {
	var out map[string]agent.ConnectStatus
	eventually(t, 30*time.Second, fmt.Sprintf("%d forwards listening", want), func() bool {
		out = map[string]agent.ConnectStatus{}
		st := status(t, dir)
		if len(st.Agents) != 1 {
			return false
		}
		for _, c := range st.Agents[0].Connects {
			if c.Listen != "" {
				out[c.Share] = c
			}
		}
		return len(out) == want
	})
	return out
}

// TestUpShareAndConnect: two shares and two connects between two agents,
// one by ticket and one by identity (team mode), data intact through each.
func TestUpShareAndConnect(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "login", w.brokerURL); err != nil {
		t.Fatalf("login: %v %s", err, stderr)
	}
	conn := agentID(t, w.connDir)
	sharerCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, sharerCfg, fmt.Sprintf("shares:\n  - name: team\n    target: %s\n    allow: [%s]\n  - name: outsider\n    target: %s\n",
		echoServer(t), conn, echoServer(t)))
	_, tickets := upTickets(t, w.sharerDir, sharerCfg, 2)

	connCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, connCfg, fmt.Sprintf("connects:\n  - peer: %s\n    share: team\n    listen: 127.0.0.1:0\n  - ticket: %s\n    listen: 127.0.0.1:0\n",
		agentID(t, w.sharerDir), tickets["outsider"]))
	start(t, "connector", bins.agent, "--state-dir", w.connDir, "up", "-c", connCfg)
	for share, c := range listens(t, w.connDir, 2) {
		t.Run(share, func(t *testing.T) { echoCheck(t, c.Listen, 8<<20) })
	}
}

// TestUpKeepsTickets: agent up issues the same ticket after a restart.
func TestUpKeepsTickets(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "shares:\n  - name: web\n    target: "+echoServer(t)+"\n")
	p, first := upTickets(t, w.sharerDir, cfg, 1)
	p.stop()
	_, second := upTickets(t, w.sharerDir, cfg, 1)
	if first["web"] != second["web"] {
		t.Fatalf("ticket changed across a restart:\n%s\n%s", first["web"], second["web"])
	}
}

// TestBrokerRestart: the broker is killed and restarted with its state dir;
// a transfer on the direct path finishes meanwhile, both agents reconnect by
// themselves, and new connections work.
func TestBrokerRestart(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	brokerDir := t.TempDir()
	startBroker := func() (*proc, string) {
		b := start(t, "broker", bins.broker, "--listen", addr, "--state-dir", brokerDir)
		return b, b.firstLine()
	}
	b, url := startBroker()
	w := &world{t: t, brokerURL: url, sharerDir: t.TempDir(), connDir: t.TempDir()}
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.sharerDir, "login", url); err != nil {
		t.Fatalf("login: %v %s", err, stderr)
	}
	_, ticket := w.share(echoServer(t))
	_, local := w.connect(ticket)

	transfer := slowEcho(t, local, 16<<20, 4*time.Second)
	time.Sleep(500 * time.Millisecond)
	b.cmd.Process.Signal(syscall.SIGKILL)
	b.wait(10 * time.Second)
	time.Sleep(time.Second)
	if _, again := startBroker(); again != url {
		t.Fatalf("restarted broker has another URL:\n%s\n%s", again, url)
	}
	waitErr(t, transfer, time.Minute, "transfer across the broker restart")
	for _, dir := range []string{w.sharerDir, w.connDir} {
		eventually(t, 45*time.Second, "agent reconnected to the broker", func() bool {
			st := status(t, dir)
			return len(st.Agents) == 1 && len(st.Agents[0].Brokers) == 1 && st.Agents[0].Brokers[0].Connected &&
				st.Agents[0].Brokers[0].Reconnects > 0
		})
	}
	echoCheck(t, local, 1<<20)
	// A new connector needs the broker: it works too.
	_, local2 := w.connect(ticket)
	echoCheck(t, local2, 1<<20)
}

// TestReload: a forward added while a transfer runs on another; the
// transfer is untouched, the new forward works, an invalid edit is refused
// and nothing stops.
func TestReload(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sharerCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, sharerCfg, fmt.Sprintf("shares:\n  - name: a\n    target: %s\n  - name: b\n    target: %s\n", echoServer(t), echoServer(t)))
	_, tickets := upTickets(t, w.sharerDir, sharerCfg, 2)

	connCfg := filepath.Join(t.TempDir(), "agent.yaml")
	one := "connects:\n  - ticket: " + tickets["a"] + "\n    listen: 127.0.0.1:0\n"
	writeFile(t, connCfg, one)
	start(t, "connector", bins.agent, "--state-dir", w.connDir, "up", "-c", connCfg)
	a := listens(t, w.connDir, 1)["a"]
	transfer := slowEcho(t, a.Listen, 64<<20, 3*time.Second)

	writeFile(t, connCfg, one+"  - ticket: "+tickets["b"]+"\n    listen: 127.0.0.1:0\n")
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "reload"); err != nil {
		t.Fatalf("reload: %v %s", err, stderr)
	}
	echoCheck(t, listens(t, w.connDir, 2)["b"].Listen, 1<<20)

	writeFile(t, connCfg, "connects:\n  - tickett: nope\n")
	_, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "reload")
	if err == nil || !strings.Contains(stderr, `agent.yaml:2:5: connects[0]: unknown field "tickett"; did you mean "ticket"?`) {
		t.Fatalf("invalid reload: err %v, stderr %q; want a refusal naming file, line and field", err, stderr)
	}
	waitErr(t, transfer, 2*time.Minute, "64 MiB transfer across two reloads")
	if got := listens(t, w.connDir, 2); got["a"].Listen != a.Listen {
		t.Errorf("forward a moved from %s to %s", a.Listen, got["a"].Listen)
	}
	echoCheck(t, a.Listen, 1<<20)
}

// TestSigtermDrains: SIGTERM during a transfer lets it finish, then the
// agent exits 0.
func TestSigtermDrains(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	conn, local := w.connect(ticket)
	transfer := slowEcho(t, local, 8<<20, 2*time.Second)
	time.Sleep(300 * time.Millisecond)
	conn.cmd.Process.Signal(syscall.SIGTERM)
	waitErr(t, transfer, time.Minute, "transfer during drain")
	if err := conn.wait(30 * time.Second); err != nil {
		t.Fatalf("connector exit after drain: %v\n%s", err, conn.stderr.String())
	}
	if c, err := net.DialTimeout("tcp", local, time.Second); err == nil {
		c.Close()
		t.Error("listener still open after shutdown")
	}
}

// TestSigtermDrainsWaiting: a connection accepted while the sharer is away
// is waiting for its session when SIGTERM comes; the drain lets it wait on,
// the sharer returns, and it goes through before the agent exits 0.
func TestSigtermDrainsWaiting(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	target := echoServer(t)
	sharer, ticket := w.share(target)
	conn, local := w.connect(ticket)
	echoCheck(t, local, 64<<10)
	sharer.stop()
	eventually(t, 30*time.Second, "the connector to say it waits for the sharer", func() bool {
		return strings.Contains(conn.stderr.String(), "waiting for the sharer")
	})
	transfer := slowEcho(t, local, 1<<20, time.Second)
	time.Sleep(300 * time.Millisecond) // accepted, and waiting for a session
	conn.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 10*time.Second, "the drain to count the waiting connection", func() bool {
		return strings.Contains(conn.stderr.String(), "1 open connection(s) may finish")
	})
	w.share(target)
	waitErr(t, transfer, time.Minute, "the waiting connection during drain")
	if err := conn.wait(30 * time.Second); err != nil {
		t.Fatalf("connector exit after drain: %v\n%s", err, conn.stderr.String())
	}
}

// TestUpMetrics: agent up serves Prometheus metrics when asked to, among
// them the Go runtime's: the agent runs on agent.DefaultProcs CPUs unless
// its environment sets GOMAXPROCS.
func TestUpMetrics(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "metrics_listen: "+metrics+"\nshares:\n  - name: web\n    target: "+echoServer(t)+"\n")
	_, tickets := upTickets(t, w.sharerDir, cfg, 1)
	_, local := w.connect(tickets["web"])
	echoCheck(t, local, 1<<20)
	var body string
	eventually(t, 10*time.Second, "metrics to count the connection", func() bool {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return strings.Contains(body, "peerport_agent_connections_total 1") && strings.Contains(body, "peerport_agent_peer_sessions 1")
	})
	procs := fmt.Sprint(agent.DefaultProcs)
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		procs = env
	}
	if want := "\ngo_sched_gomaxprocs_threads " + procs + "\n"; !strings.Contains(body, want) {
		t.Errorf("metrics lack %q", strings.TrimSpace(want))
	}
}

// TestUpBadEntryStopsAlone: in agent up, a connect the broker refuses stops
// alone with its error in status; a valid connect to the same sharer works.
// The share is unknown, refused once the broker's registration grace (short
// here) is over.
func TestUpBadEntryStopsAlone(t *testing.T) {
	t.Parallel()
	brokerCfg := filepath.Join(t.TempDir(), "broker.yaml")
	writeFile(t, brokerCfg, "limits:\n  registration_grace: 2s\n")
	w := newWorldWith(t, "-c", brokerCfg)
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "login", w.brokerURL); err != nil {
		t.Fatalf("login: %v %s", err, stderr)
	}
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "shares:\n  - name: web\n    target: "+echoServer(t)+"\n")
	_, tickets := upTickets(t, w.sharerDir, cfg, 1)
	connCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, connCfg, fmt.Sprintf("connects:\n  - ticket: %s\n    listen: 127.0.0.1:0\n  - peer: %s\n    share: missing\n    listen: 127.0.0.1:0\n",
		tickets["web"], agentID(t, w.sharerDir)))
	start(t, "connector", bins.agent, "--state-dir", w.connDir, "up", "-c", connCfg)
	var good agent.ConnectStatus
	eventually(t, 30*time.Second, "the valid forward up and the bad one refused", func() bool {
		st := status(t, w.connDir)
		if len(st.Agents) != 1 {
			return false
		}
		var refused bool
		for _, c := range st.Agents[0].Connects {
			switch c.Share {
			case "web":
				good = c
			case "missing":
				refused = strings.Contains(c.LastError, "not on its allow list")
			}
		}
		return good.Listen != "" && refused
	})
	echoCheck(t, good.Listen, 1<<20)
}

// TestConnectWaitsForRegistration: a connect that asks while the sharer's
// identity is online through another process, but the share is not
// registered (yet: as right after a broker restart, its processes come back
// one by one), is told so, retries, and connects once the share is back. It
// used to be told "unauthorized" and exit for good.
func TestConnectWaitsForRegistration(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "shares:\n  - name: web\n    target: "+echoServer(t)+"\n")
	up, tickets := upTickets(t, w.sharerDir, cfg, 1)
	up.stop()
	w.share(echoServer(t), "--name", "other") // the same identity, online

	c := start(t, "connector", bins.agent, "--state-dir", w.connDir, "connect", tickets["web"], "--listen", "127.0.0.1:0")
	eventually(t, 30*time.Second, "connector told the share is not registered", func() bool {
		return strings.Contains(c.stderr.String(), proto.CodeNotRegistered)
	})
	select {
	case <-c.done:
		t.Fatalf("connector gave up: %v\n%s", c.err, c.stderr.String())
	default:
	}
	upTickets(t, w.sharerDir, cfg, 1)
	echoCheck(t, c.firstLine(), 1<<20)
}
