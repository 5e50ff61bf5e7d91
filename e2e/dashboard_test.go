package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// chromiumPath finds Debian's chromium, skipping the test without it unless
// PEERPORT_LAB=required.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	err := errors.New("no chromium on PATH (Debian: apt-get install chromium): the dashboard browser test needs it")
	if os.Getenv(natlab.EnvRequired) == "required" {
		t.Fatalf("%v (%s=required)", err, natlab.EnvRequired)
	}
	t.Skip(err)
	return ""
}

// dashboardOf is the dashboard URL of the one agent running with dir.
func dashboardOf(t *testing.T, dir string) string {
	t.Helper()
	var u string
	eventually(t, 30*time.Second, "a dashboard URL in agent status", func() bool {
		st := status(t, dir)
		if len(st.Agents) == 1 {
			u = st.Agents[0].Dashboard
		}
		return u != ""
	})
	return u
}

// pump keeps bytes flowing through the tunnel at addr until the test ends:
// it writes, and the echo server sends them back to a reader that drops them.
func pump(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(io.Discard, c)
		done <- struct{}{}
	}()
	go func() {
		buf := make([]byte, 16<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				break
			}
			time.Sleep(20 * time.Millisecond) // a trickle: the counters, not the speed, are under test
		}
		done <- struct{}{}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		<-done
	})
}

// TestDashboardBrowser loads a running sharer's dashboard in headless
// Chromium: after a connect and data flow it shows the peer on a direct
// path, and its byte counter grows while bytes move. The same page refuses
// a foreign Host or Origin.
func TestDashboardBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	w := newWorld(t)
	_, ticket := w.share(echoServer(t), "--name", "web") // the default --dashboard: 4040, or a free port
	_, local := w.connect(ticket)
	echoCheck(t, local, 64<<10)
	eventually(t, 30*time.Second, "a direct peer session on the sharer", func() bool {
		st := status(t, w.sharerDir)
		return len(st.Agents) == 1 && len(st.Agents[0].Peers) == 1 && st.Agents[0].Peers[0].Path == "direct"
	})
	page := dashboardOf(t, w.sharerDir)
	pu, err := url.Parse(page)
	if err != nil || pu.Query().Get("token") == "" {
		t.Fatalf("dashboard URL %q: want http://127.0.0.1:PORT/?token=…", page)
	}
	if conn := dashboardOf(t, w.connDir); strings.SplitN(conn, "/?", 2)[0] == strings.SplitN(page, "/?", 2)[0] {
		t.Fatalf("sharer and connector serve their dashboards on one address: %s", conn)
	}

	t.Run("refusals", func(t *testing.T) { dashboardRefusals(t, pu) })

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless,
		chromedp.Flag("disable-gpu", true), chromedp.UserDataDir(t.TempDir()))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	defer bcancel()
	if err := chromedp.Do(bctx); err != nil { // starts the browser, outside the page's time
		t.Fatalf("start chromium: %v", err)
	}

	const peerDirect = `(() => { const p = document.querySelector('.peer[data-role="sharer"] .path'); return p !== null && p.textContent === 'direct'; })()`
	t0 := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("navigate: %v", err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](peerDirect, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("the page never showed the peer on a direct path: %v", err)
	}
	t.Logf("page load, navigation to the peer shown direct: %v", time.Since(t0).Round(time.Millisecond))

	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	if loc := eval(`location.href`); strings.Contains(loc, "token") {
		t.Errorf("the token stays in the address bar: %s", loc)
	}
	if got := eval(`document.querySelector('.share[data-share="web"] .ticket').textContent`); got != ticket {
		t.Errorf("ticket on the page %q, want %q", got, ticket)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.querySelector('.share[data-share="web"] img.qr').naturalWidth > 0`,
		chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Errorf("QR code of the ticket not shown: %v", err)
	}
	id := agentID(t, w.connDir)
	if got := eval(`document.querySelector('.peer[data-role="sharer"]').dataset.peer`); got != id {
		t.Errorf("peer on the page %q, want the connector %q", got, id)
	}

	pump(t, local)
	bytesIn := func() int64 {
		t.Helper()
		n, err := strconv.ParseInt(eval(`document.querySelector('.peer[data-role="sharer"] .bytes-in').dataset.value`), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := bytesIn()
	grown := `Number(document.querySelector('.peer[data-role="sharer"] .bytes-in').dataset.value) > ` + strconv.FormatInt(first, 10)
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](grown, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("bytes in stayed at %d while data flowed: %v", first, err)
	}
	second := bytesIn()
	rate := eval(`document.querySelector('.peer[data-role="sharer"] .rate-in').textContent`)
	t.Logf("peer bytes in on the page: %d, then %d (%s)", first, second, rate)
	text := eval(`document.querySelector('.peer[data-role="sharer"]').innerText`)
	t.Logf("the peer as the page shows it:\n%s", text)
	// The connections so far: the echo check's, closed, and the pump's, open.
	if got := eval(`[...document.querySelectorAll('#recent tr.conn')].map(r => r.dataset.open).sort().join(",")`); !strings.Contains(got, "false") || !strings.Contains(got, "true") {
		t.Errorf("recent connections on the page: open flags %q, want a closed one and an open one", got)
	}
}

// dashboardRefusals asks the dashboard what another local page or a DNS
// rebinding attack would: each is refused, and nothing carries CORS headers.
func dashboardRefusals(t *testing.T, page *url.URL) {
	tok := page.Query().Get("token")
	base := "http://" + page.Host
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		name, path, host, origin string
		want                     int
	}{
		{"token", "/api/status?token=" + tok, "", "", 200},
		{"no token", "/api/status", "", "", 401},
		{"foreign host", "/api/status?token=" + tok, "attacker.example:" + page.Port(), "", 403},
		{"foreign origin", "/events?token=" + tok, "", "http://attacker.example", 403},
		{"foreign origin, page", "/?token=" + tok, "", "http://attacker.example", 403},
	} {
		req, err := http.NewRequest(http.MethodGet, base+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d: %.200s", tc.name, resp.StatusCode, tc.want, body)
		}
		if tc.want != 200 && strings.Contains(string(body), "pp1") {
			t.Errorf("%s: a refusal shows a ticket", tc.name)
		}
		for k := range resp.Header {
			if strings.HasPrefix(strings.ToLower(k), "access-control-") {
				t.Errorf("%s: CORS header %s", tc.name, k)
			}
		}
	}
}

// TestDashboardOff: --no-dashboard serves no page and status names none;
// a dashboard address off loopback is refused before the agent starts.
func TestDashboardOff(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t), "--no-dashboard")
	var st agent.Status
	eventually(t, 30*time.Second, "the sharer in status", func() bool {
		st = status(t, w.sharerDir)
		return len(st.Agents) == 1
	})
	if d := st.Agents[0].Dashboard; d != "" {
		t.Fatalf("dashboard %q with --no-dashboard", d)
	}
	_, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "connect", ticket, "--dashboard", "0.0.0.0:4040")
	if err == nil || !strings.Contains(stderr, "not a loopback address") {
		t.Fatalf("--dashboard 0.0.0.0:4040: %v, stderr:\n%s", err, stderr)
	}
}
