package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pion/turn/v5"

	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/testutil"
)

// clientTestSecret is the TURN REST secret of the test servers.
const clientTestSecret = "peerport-relay-test-secret"

// loopback is where every test peer lives.
var loopback = netip.MustParseAddr("127.0.0.1")

// clientTestCreds makes TURN REST credentials for agent id, valid for ttl,
// with cred.go's Credentials: the tests check it against pion and coturn.
func clientTestCreds(secret, id string, ttl time.Duration) (username, password string) {
	return Credentials([]byte(secret), id, time.Now().Add(ttl))
}

// testTURN is a TURN server a test talks to.
type testTURN struct {
	url  string
	pion *turn.Server // nil for coturn
}

// creds returns fresh REST credentials for agent id on this server.
func (s *testTURN) creds(id string) (username, password string) {
	return clientTestCreds(clientTestSecret, id, time.Hour)
}

// config is a Config for agent id on this server.
func (s *testTURN) config(t *testing.T, id string) Config {
	u, p := s.creds(id)
	return Config{URL: s.url, Username: u, Password: p, Log: testutil.Log(t, "client "+id)}
}

// pionOptions shape the in-process server.
type pionOptions struct {
	allocationLifetime time.Duration // 0: pion's 10 minutes
	permissionTimeout  time.Duration // 0: pion's 10 minutes
	denyPeers          bool          // every CreatePermission gets 403
	noQuota            bool          // every Allocate gets 486
}

// startPionTURN runs pion/turn's server on a loopback TCP port, relaying
// from 127.0.0.1, with TURN REST auth (clientTestSecret). Its permission
// handler lets loopback peers in, which real deployments must not.
func startPionTURN(t *testing.T, o pionOptions) *testTURN {
	t.Helper()
	log := testutil.Log(t, "pion server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	loggers := logging.Pion(log)
	cfg := turn.ServerConfig{
		Realm:              "peerport",
		AuthHandler:        turn.LongTermTURNRESTAuthHandler(clientTestSecret, loggers.NewLogger("auth")),
		LoggerFactory:      loggers,
		AllocationLifetime: o.allocationLifetime,
		PermissionTimeout:  o.permissionTimeout,
		ListenerConfigs: []turn.ListenerConfig{{
			Listener: ln,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.IPv4(127, 0, 0, 1),
				Address:      "127.0.0.1",
			},
			PermissionHandler: func(net.Addr, net.IP) bool { return !o.denyPeers },
		}},
	}
	if o.noQuota {
		cfg.QuotaHandler = func(string, string, net.Addr) bool { return false }
	}
	srv, err := turn.NewServer(cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("pion server close: %v", err)
		}
	})
	return &testTURN{url: "turn:" + ln.Addr().String() + "?transport=tcp", pion: srv}
}

// labRequired mirrors natlab.Require: with PEERPORT_LAB=required (as .ci/run
// sets it) a missing tool fails the test instead of skipping it. (The
// constant is natlab.EnvRequired; not imported, to keep relay's tests off
// the lab's build.)
func labRequired() bool { return os.Getenv("PEERPORT_LAB") == "required" }

// startCoturn runs coturn's turnserver on a free loopback port, TCP only,
// TURN REST auth with clientTestSecret, loopback peers allowed, plus extra
// flags, and waits until it listens. It skips the test when turnserver is
// not installed, unless PEERPORT_LAB=required.
func startCoturn(t *testing.T, extra ...string) *testTURN {
	t.Helper()
	path, err := exec.LookPath("turnserver")
	if err != nil {
		if labRequired() {
			t.Fatalf("relay: turnserver (coturn) not found in PATH (PEERPORT_LAB=required); apt-get install coturn")
		}
		t.Skip("relay: turnserver (coturn) not found in PATH; apt-get install coturn to run this test")
	}
	out := &testutil.Buffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("PEERPORT_TEST_LOG") == "1" {
			t.Logf("turnserver output:\n%s", out.String())
		}
	})
	dir := t.TempDir()
	for range 5 { // the free port may be taken between probe and start
		port := freeTCPPort(t)
		args := []string{
			"-n", // no config file
			"--listening-ip=127.0.0.1", "--listening-port=" + strconv.Itoa(port),
			"--relay-ip=127.0.0.1",
			"--use-auth-secret", "--static-auth-secret=" + clientTestSecret, "--realm=peerport",
			"--allow-loopback-peers",
			"--no-udp", "--no-dtls", "--no-tls", "--no-cli", "--no-rfc5780",
			"--log-file=stdout", "--simple-log",
			"--pidfile=" + dir + "/turnserver.pid",
			"--userdb=" + dir + "/turndb",
		}
		cmd := exec.Command(path, append(args, extra...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start turnserver: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				c.Close()
				t.Cleanup(stop)
				return &testTURN{url: "turn:" + addr + "?transport=tcp"}
			}
			select {
			case <-exited:
			case <-time.After(20 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				stop()
				t.Fatalf("turnserver does not listen on %s after 10 s", addr)
			}
			break // exited: maybe the port was taken; try another
		}
		fmt.Fprintf(out, "--- turnserver on port %d exited; retrying on another port\n", port)
	}
	t.Fatal("turnserver would not start")
	return nil
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// turnServers are the servers the end-to-end tests run against.
var turnServers = []struct {
	name  string
	start func(*testing.T) *testTURN
}{
	{"pion", func(t *testing.T) *testTURN { return startPionTURN(t, pionOptions{}) }},
	{"coturn", func(t *testing.T) *testTURN { return startCoturn(t) }},
}

// allocate makes an allocation for agent id and permits loopback peers.
func allocate(t *testing.T, srv *testTURN, id string) *Allocation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Allocate(ctx, srv.config(t, id))
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Permit(ctx, loopback); err != nil {
		t.Fatalf("Permit: %v", err)
	}
	return a
}

// dialAccept dials the relayed address as the connector does and returns
// both ends: the connector's and the one Accept returned.
func dialAccept(t *testing.T, a *Allocation) (peer, accepted net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	peer, err := d.DialContext(ctx, "tcp", a.Addr().String())
	if err != nil {
		t.Fatalf("dial relayed address: %v", err)
	}
	t.Cleanup(func() { peer.Close() })
	accepted, err = a.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { accepted.Close() })
	return peer, accepted
}
