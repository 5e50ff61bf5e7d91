package natlab_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// requireTinyproxy skips without tinyproxy, or fails where the lab is
// required (CI installs it).
func requireTinyproxy(t *testing.T) {
	t.Helper()
	natlab.Require(t)
	if _, err := exec.LookPath("tinyproxy"); err != nil {
		if os.Getenv(natlab.EnvRequired) == "required" {
			t.Fatalf("tinyproxy not installed (%s=required); apt-get install tinyproxy", natlab.EnvRequired)
		}
		t.Skip("tinyproxy not installed; apt-get install tinyproxy")
	}
}

// connectVia asks the HTTP proxy, from n, for a tunnel to target (with
// Basic credentials when userinfo is "user:password") and returns the
// proxy's status code and, on 200, the tunnel. The answer head is read
// byte by byte so no tunnelled byte is lost to a buffer.
func connectVia(ctx context.Context, n *natlab.Node, proxy netip.AddrPort, target, userinfo string) (net.Conn, int, error) {
	c, err := n.DialWith(ctx, &net.Dialer{Timeout: probeTimeout}, "tcp", proxy.String())
	if err != nil {
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if userinfo != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(userinfo)) + "\r\n"
	}
	if _, err := c.Write([]byte(req + "\r\n")); err != nil {
		c.Close()
		return nil, 0, err
	}
	var head []byte
	one := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") && len(head) < 16<<10 {
		if _, err := c.Read(one); err != nil {
			c.Close()
			return nil, 0, fmt.Errorf("CONNECT %s via %s: %w after %q", target, proxy, err, head)
		}
		head = append(head, one[0])
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(head))), nil)
	if err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("CONNECT %s via %s: %w", target, proxy, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, resp.StatusCode, nil
	}
	return c, resp.StatusCode, nil
}

// TestProxyOnly proves the "proxy" network before any agent is involved:
// host a reaches nothing but the real tinyproxy on proxy-a beside it, which
// tunnels CONNECT to port 443 and refuses every other port (403); with
// BasicAuth on, a request without credentials gets 407, one with wrong ones
// 401.
func TestProxyOnly(t *testing.T) {
	requireTinyproxy(t)
	lab := natlab.New(t, natlab.Pair(natlab.BehindProxy, natlab.BehindCone))
	ctx := testCtx(t, 60*time.Second)
	broker, a, pa := lab.Host("broker"), lab.Host("a"), lab.Host("proxy-a")
	serveEchoOn(t, broker, []int{443, 7000}, nil)
	open, err := lab.StartProxy(ctx, "proxy-a", natlab.ProxyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	authed, err := pa.StartProxy(ctx, natlab.ProxyConfig{Port: 3129, Auth: "user:s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := open.URL(), "http://"+pa.IP().String()+":3128"; got != want {
		t.Errorf("URL %s, want %s", got, want)
	}
	if got, want := authed.URL(), "http://user:s3cret@"+pa.IP().String()+":3129"; got != want {
		t.Errorf("URL %s, want %s", got, want)
	}
	to := func(port int) string { return net.JoinHostPort(broker.IP().String(), strconv.Itoa(port)) }

	t.Run("direct", func(t *testing.T) {
		tests := []struct {
			name string
			from *natlab.Node
			to   string
			want string
		}{
			{"tcp 443", a, to(443), "timeout"},
			{"tcp 7000", a, to(7000), "timeout"},
			{"router", a, net.JoinHostPort(lab.Router("gw-a").LANIP().String(), "22"), "timeout"},
			// The proxy itself gets out, to any port.
			{"proxy tcp 7000", pa, to(7000), "connected"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				if got := reach(ctx, tt.from, "tcp", tt.to); got != tt.want {
					t.Errorf("%s -> %s: %s, want %s", tt.from, tt.to, got, tt.want)
				}
			})
		}
	})

	t.Run("CONNECT", func(t *testing.T) {
		tests := []struct {
			name     string
			proxy    *natlab.Proxy
			target   string
			userinfo string
			want     int
		}{
			{"443", open, to(443), "", 200},
			{"7000", open, to(7000), "", 403},
			{"auth 443", authed, to(443), "user:s3cret", 200},
			{"auth 7000", authed, to(7000), "user:s3cret", 403},
			{"auth missing", authed, to(443), "", 407},
			// tinyproxy 1.11 answers wrong credentials with 401 and
			// WWW-Authenticate, not 407: proxy clients must take both.
			{"auth wrong", authed, to(443), "user:nope", 401},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				c, code, err := connectVia(ctx, a, tt.proxy.Addr, tt.target, tt.userinfo)
				if err != nil {
					t.Fatal(err)
				}
				if code != tt.want {
					t.Fatalf("CONNECT %s via %s: %d, want %d", tt.target, tt.proxy.Addr, code, tt.want)
				}
				if c != nil {
					defer c.Close()
					if got := checkEcho(c, tt.target); got != "connected" {
						t.Errorf("tunnel to %s: %s", tt.target, got)
					}
				}
			})
		}
	})

	// tinyproxy's own log says why it refused, for whoever debugs a test.
	// It may write that line after the 403 has reached us, so wait for it.
	const refusal = "Refused CONNECT method on port 7000"
	for !strings.Contains(open.Proc.Stdout(), refusal) {
		if ctx.Err() != nil {
			t.Errorf("tinyproxy's log lacks the refusal:\n%s", open.Proc.Stdout())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := pa.StartProxy(ctx, natlab.ProxyConfig{Port: 3130, Auth: "no-colon"}); err == nil || !strings.Contains(err.Error(), "auth:") {
		t.Errorf("auth without a password: %v, want an auth error", err)
	}
	if _, err := lab.Router("gw-a").StartProxy(ctx, natlab.ProxyConfig{}); err == nil {
		t.Error("a proxy started on a router")
	}
}
