package broker

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/testutil"
)

// startBroker starts a broker on loopback with the rest of o (STUN off
// unless o names its addresses) and a harness to log agents in to it.
func startBroker(t *testing.T, o Options) (*Running, *harness) {
	t.Helper()
	dir := t.TempDir()
	o.Listen, o.PublicAddr, o.StateDir, o.NoSTUN = "127.0.0.1:0", "127.0.0.1", dir, o.STUNListen == nil
	if o.Log == nil {
		o.Log = testLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.Done:
		case <-time.After(10 * time.Second):
			t.Error("broker did not stop")
		}
	})
	st, err := LoadOrCreateState(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r, &harness{srv: r.Server, state: st, dial: func(t *testing.T) net.Conn {
		c, err := net.DialTimeout("tcp", r.Addr.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}}
}

// TestStartTURN: Start runs the relay on its own listener at the public
// address, keeps its secret in the state dir, and tells sharers of it.
func TestStartTURN(t *testing.T) {
	r, h := startBroker(t, Options{TURNListen: "127.0.0.1:0", TURN: RelayConfig{AllowPeers: loopback8}})
	if r.TURN == nil || r.TURNURL != "turn:"+r.TURN.String()+"?transport=tcp" {
		t.Fatalf("TURN %v, URL %q", r.TURN, r.TURNURL)
	}
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:1"))
	if in.TURN.URL != r.TURNURL || in.TURN.Password != relay.Password([]byte(h.state.TURNSecret), in.TURN.Username) {
		t.Fatalf("intro TURN %+v", in.TURN)
	}
	cl := dialTURN(t, r.TURN.String(), in.TURN.Username, in.TURN.Password)
	alloc := mustAllocate(t, cl.AllocateTCP)
	if a := alloc.Addr().(*net.TCPAddr); !a.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("relayed address %v, want the public address", a)
	}
	c, err := alloc.Dial("tcp", echoServer(t, "127.0.0.2").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoThrough(t, c, 64<<10)
}

func TestStartTURNOff(t *testing.T) {
	// The default listener (127.0.0.2:3480 here) taken: the broker runs
	// without relay; with NoTURN it has none either.
	ln, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(DefaultTURNPort))
	if err != nil {
		t.Skipf("cannot hold the default TURN port for the test: %v", err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := Start(ctx, Options{Listen: "127.0.0.2:0", PublicAddr: "127.0.0.2", StateDir: t.TempDir(), NoSTUN: true, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if r.TURN != nil || r.TURNURL != "" {
		t.Errorf("TURN %v, URL %q with the TURN port taken", r.TURN, r.TURNURL)
	}
	cancel()
	<-r.Done

	// An explicit listener that cannot be bound is an error.
	_, err = Start(context.Background(), Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), NoSTUN: true, TURNListen: ln.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "turn listen") {
		t.Errorf("Start with the TURN port taken: %v", err)
	}

	r, _ = startBroker(t, Options{NoTURN: true, TURNListen: "127.0.0.1:0"})
	if r.TURN != nil || r.TURNURL != "" {
		t.Errorf("NoTURN: TURN %v, URL %q", r.TURN, r.TURNURL)
	}
}

// requireTool finds a tool a test needs: it skips without it, unless
// PEERPORT_LAB=required (as in CI), where it fails.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := name + " not found in PATH; apt-get install " + pkg + " to run this test"
	if os.Getenv("PEERPORT_LAB") == "required" {
		t.Fatalf("%s (PEERPORT_LAB=required)", msg)
	}
	t.Skip(msg)
	return ""
}

// uclientTotals matches the summary turnutils_uclient prints at the end.
var uclientTotals = regexp.MustCompile(`start_mclient: tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)`)

// TestRelayCoturnClient: coturn's test client, in TCP relay mode (-T: two
// clients, each allocating; one Connects to the other's relayed address,
// which takes it as an inbound peer), moves its messages through our relay
// with REST credentials it makes from the secret. Its peers are the relay's
// own addresses on 127.0.0.1, hence allow_peers and the introduction.
func TestRelayCoturnClient(t *testing.T) {
	t.Parallel() // the client takes seconds, mostly waiting
	uclient := requireTool(t, "turnutils_uclient", "coturn")
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8; c.Now = time.Now })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	h.relayIntro(t, sharer, tk) // the connector's observed address: 127.0.0.1
	_, port, _ := net.SplitHostPort(h.addr)
	const n, size = 5, 100
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, uclient, "-T", "-X", "-p", port, "-u", tk.Sharer.String(), "-W", testTURNSecret,
		"-n", strconv.Itoa(n), "-l", strconv.Itoa(size), "-z", "5", "127.0.0.1")
	out, err := cmd.CombinedOutput()
	t.Logf("turnutils_uclient:\n%s", out)
	if err != nil {
		t.Fatalf("turnutils_uclient: %v", err)
	}
	m := uclientTotals.FindAllSubmatch(out, -1)
	want := strconv.Itoa(2 * n * size) // two clients
	if len(m) == 0 || string(m[len(m)-1][1]) != want || string(m[len(m)-1][2]) != want {
		t.Fatalf("turnutils_uclient did not relay %s bytes each way (want the line %q)", want, "start_mclient: tot_send_bytes ~ "+want+", tot_recv_bytes ~ "+want)
	}
	reg := h.srv.Registry()
	for _, d := range []string{directionToPeer, directionFromPeer} {
		if got := metric(t, reg, "peerport_broker_turn_relayed_bytes_total", "direction", d); got < float64(2*n*size) {
			t.Errorf("relayed_bytes_total{direction=%s} = %v, want at least %d", d, got, 2*n*size)
		}
	}
	if got := metric(t, reg, "peerport_broker_turn_allocations_total"); got < 2 {
		t.Errorf("allocations_total = %v, want at least 2", got)
	}
}

// startCoturn runs coturn's turnserver on loopback, TURN over TCP only,
// with TURN REST credentials of secret, until the test ends.
func startCoturn(t *testing.T, secret string) string {
	t.Helper()
	path := requireTool(t, "turnserver", "coturn")
	dir := t.TempDir()
	out := &testutil.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("turnserver:\n%s", out.String())
		}
	})
	for range 5 { // the free port may be taken between probe and start
		probe, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := probe.Addr().String()
		probe.Close()
		_, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command(path, "-n", "--listening-ip=127.0.0.1", "--listening-port="+port, "--relay-ip=127.0.0.1",
			"--use-auth-secret", "--static-auth-secret="+secret, "--realm=peerport",
			"--no-udp", "--no-dtls", "--no-tls", "--no-cli", "--no-rfc5780", "--log-file=stdout", "--simple-log",
			"--pidfile="+filepath.Join(dir, "turnserver.pid"), "--userdb="+filepath.Join(dir, "turndb"))
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
				c.Close()
				t.Cleanup(stop)
				return addr
			}
			select {
			case <-exited:
				deadline = time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
		stop()
	}
	t.Fatal("turnserver would not start")
	return ""
}

// TestRelayExternalTURN: with an external TURN server configured, the
// broker runs no relay and issues credentials coturn's use-auth-secret
// takes.
func TestRelayExternalTURN(t *testing.T) {
	const secret = "coturn-shared-secret-for-tests"
	addr := startCoturn(t, secret)
	url := "turn:" + addr + "?transport=tcp"
	r, h := startBroker(t, Options{ExternalTURN: &ExternalTURN{URL: url, Secret: []byte(secret)}, TURNCredentialTTL: 5 * time.Minute})
	if r.TURN != nil || r.TURNURL != url {
		t.Fatalf("TURN %v, URL %q", r.TURN, r.TURNURL)
	}
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk)
	if exp, _, err := relay.ParseUsername(in.TURN.Username); err != nil || exp.After(time.Now().Add(5*time.Minute)) || exp.Before(time.Now().Add(4*time.Minute)) {
		t.Errorf("username %q: expiry %v, %v; want in 5 minutes", in.TURN.Username, exp, err)
	}
	alloc := mustAllocate(t, dialTURN(t, addr, in.TURN.Username, in.TURN.Password).AllocateTCP)
	if ip := alloc.Addr().(*net.TCPAddr).IP; !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("coturn relayed address %v", alloc.Addr())
	}
	_, err := dialTURN(t, addr, in.TURN.Username, relay.Password([]byte("not-it"), in.TURN.Username)).AllocateTCP()
	if code := turnCode(err); code != int(stun.CodeUnauthorized) {
		t.Errorf("coturn took a forged password: %v", err)
	}
}
