package dashboard

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
)

type fakeStatus struct {
	ID      string `json:"id"`
	BytesIn int64  `json:"bytes_in"`
}

// running is a dashboard serving a status whose bytes_in the test moves.
type running struct {
	s      *Server
	bytes  atomic.Int64
	client *http.Client
	done   chan error
	stop   context.CancelFunc
	once   sync.Once
}

func startDashboard(t *testing.T, mod func(*Config)) *running {
	t.Helper()
	r := &running{done: make(chan error, 1)}
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := Config{Addr: "127.0.0.1:0", Log: log, Interval: 200 * time.Millisecond, Poll: 50 * time.Millisecond,
		Status: func() any { return fakeStatus{ID: "agent-1", BytesIn: r.bytes.Load()} },
		Ticket: func(share string) (string, bool) { return "pp1SECRET", share == "web" },
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r.s, r.stop = s, cancel
	tr := &http.Transport{}
	r.client = &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	go func() { r.done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		r.shutdown(t)
		tr.CloseIdleConnections()
	})
	return r
}

func (r *running) shutdown(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.stop()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after its context ended")
		}
	})
}

func (r *running) base() string { return "http://" + r.s.Addr().String() }

func (r *running) port() string { return strconv.Itoa(r.s.Addr().(*net.TCPAddr).Port) }

func TestGuard(t *testing.T) {
	r := startDashboard(t, nil)
	tok := r.s.token
	cookie := &http.Cookie{Name: r.s.cookieName(), Value: tok}
	own := "127.0.0.1:" + r.port()
	for _, tc := range []struct {
		name    string
		method  string
		path    string
		host    string
		header  map[string]string
		cookie  *http.Cookie
		want    int
		wantHdr map[string]string
	}{
		{name: "right token", path: "/api/status?token=" + tok, want: 200},
		{name: "right cookie", path: "/api/status", cookie: cookie, want: 200},
		{name: "no token", path: "/api/status", want: 401},
		{name: "no token, page", path: "/", want: 401},
		{name: "no token, events", path: "/events", want: 401},
		{name: "wrong token", path: "/api/status?token=" + tok + "x", want: 401},
		{name: "wrong cookie", path: "/api/status", cookie: &http.Cookie{Name: r.s.cookieName(), Value: "nope"}, want: 401},
		{name: "cookie of another port", path: "/api/status", cookie: &http.Cookie{Name: "peerport_dashboard_1", Value: tok}, want: 401},
		{name: "localhost host", path: "/api/status?token=" + tok, host: "localhost:" + r.port(), want: 200},
		{name: "foreign host (DNS rebinding)", path: "/api/status?token=" + tok, host: "evil.example:" + r.port(), want: 403},
		{name: "foreign host with cookie", path: "/api/status", host: "rebind.evil.example", cookie: cookie, want: 403},
		{name: "own IP, other port", path: "/api/status?token=" + tok, host: "127.0.0.1:1", want: 403},
		{name: "no port in host", path: "/api/status?token=" + tok, host: "127.0.0.1", want: 403},
		{name: "own origin", path: "/api/status", cookie: cookie, header: map[string]string{"Origin": "http://" + own}, want: 200},
		{name: "foreign origin", path: "/api/status", cookie: cookie, header: map[string]string{"Origin": "http://evil.example"}, want: 403},
		{name: "foreign origin with token", path: "/events?token=" + tok, header: map[string]string{"Origin": "http://evil.example"}, want: 403},
		{name: "other loopback port origin", path: "/api/status", cookie: cookie, header: map[string]string{"Origin": "http://127.0.0.1:1"}, want: 403},
		{name: "https origin", path: "/api/status", cookie: cookie, header: map[string]string{"Origin": "https://" + own}, want: 403},
		{name: "null origin", path: "/api/status", cookie: cookie, header: map[string]string{"Origin": "null"}, want: 403},
		{name: "cross-site fetch", path: "/qr/web", cookie: cookie, header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, want: 403},
		{name: "same-site fetch (a page on another loopback port)", path: "/qr/web", cookie: cookie, header: map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, want: 403},
		{name: "same-origin fetch", path: "/qr/web", cookie: cookie, header: map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"}, want: 200},
		{name: "cross-site navigation without token", path: "/", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, want: 401},
		{name: "preflight", method: http.MethodOptions, path: "/api/status", cookie: cookie,
			header: map[string]string{"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}, want: 403},
		{name: "preflight own origin", method: http.MethodOptions, path: "/api/status", cookie: cookie,
			header: map[string]string{"Origin": "http://" + own, "Access-Control-Request-Method": "GET"}, want: 405},
		{name: "page with token sets the cookie", path: "/?token=" + tok, want: 303,
			wantHdr: map[string]string{"Location": "/"}},
		{name: "page with cookie", path: "/", cookie: cookie, want: 200, wantHdr: map[string]string{"Content-Type": "text/html; charset=utf-8"}},
		{name: "script", path: "/app.js", cookie: cookie, want: 200, wantHdr: map[string]string{"Content-Type": "text/javascript; charset=utf-8"}},
		{name: "qr", path: "/qr/web", cookie: cookie, want: 200, wantHdr: map[string]string{"Content-Type": "image/svg+xml"}},
		{name: "qr of no share", path: "/qr/nope", cookie: cookie, want: 404},
		{name: "qr without token", path: "/qr/web", want: 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, r.base()+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			if tc.cookie != nil {
				req.AddCookie(tc.cookie)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := r.client.Do(req.WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			for k := range resp.Header {
				if strings.HasPrefix(strings.ToLower(k), "access-control-") {
					t.Errorf("CORS header %s: %s", k, resp.Header.Get(k))
				}
			}
			for _, k := range []string{"Content-Security-Policy", "X-Frame-Options", "Cache-Control"} {
				if resp.Header.Get(k) == "" {
					t.Errorf("no %s header", k)
				}
			}
			for k, v := range tc.wantHdr {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if tc.want != 200 && strings.Contains(string(body), "pp1SECRET") {
				t.Errorf("refusal shows the ticket: %s", body)
			}
			if tc.want == 303 {
				c := resp.Cookies()
				if len(c) != 1 || c[0].Name != r.s.cookieName() || c[0].Value != tok || !c[0].HttpOnly || c[0].SameSite != http.SameSiteStrictMode {
					t.Errorf("cookie %+v: want %s=token, HttpOnly, SameSite=Strict", c, r.s.cookieName())
				}
			}
		})
	}
}

// TestPageFlow follows what a browser does: the URL with the token, the
// redirect that drops it, then the page and its API on the cookie alone.
func TestPageFlow(t *testing.T) {
	r := startDashboard(t, nil)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: r.client.Transport, Timeout: 10 * time.Second}
	resp, err := c.Get(r.s.URL())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.RawQuery != "" || !strings.Contains(string(body), `id="peers"`) {
		t.Fatalf("page: %d at %s, body %.200q", resp.StatusCode, resp.Request.URL, body)
	}
	resp, err = c.Get(r.base() + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"id":"agent-1"`) {
		t.Fatalf("status on the cookie: %d %s", resp.StatusCode, body)
	}
}

// readEvents returns the data lines of an event stream, one per event.
func readEvents(t *testing.T, body io.Reader) <-chan string {
	out := make(chan string, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				out <- d
			}
		}
	}()
	return out
}

func openEvents(t *testing.T, r *running, ctx context.Context) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.base()+"/events?token="+r.s.token, nil)
	c := &http.Client{Transport: r.client.Transport} // no timeout: a stream
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestEvents(t *testing.T) {
	r := startDashboard(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := openEvents(t, r, ctx)
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("events: %d %q", resp.StatusCode, ct)
	}
	ev := readEvents(t, resp.Body)
	next := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case d, ok := <-ev:
				if !ok {
					t.Fatalf("stream ended waiting for %s", want)
				}
				if strings.Contains(d, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no event with %s", want)
			}
		}
	}
	next(`"bytes_in":0`) // at once, before any change
	r.bytes.Store(12345)
	next(`"bytes_in":12345`) // on change
	next(`"bytes_in":12345`) // and again with nothing changed: the heartbeat
}

func TestEventClientsBounded(t *testing.T) {
	r := startDashboard(t, func(c *Config) { c.MaxClients = 2 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		resp := openEvents(t, r, ctx)
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("stream within the bound: %d", resp.StatusCode)
		}
	}
	resp := openEvents(t, r, ctx)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream over the bound: %d, want 503", resp.StatusCode)
	}
}

func TestListenAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:4040", true},
		{"localhost:4040", true},
		{"LOCALHOST:0", true},
		{"127.0.0.2:0", true},
		{"[::1]:4040", true},
		{"0.0.0.0:4040", false},
		{":4040", false},
		{"[::]:4040", false},
		{"192.0.2.10:4040", false},
		{"example.com:4040", false},
		{"[::ffff:192.0.2.10]:4040", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := CheckAddr(tc.addr)
			if tc.ok != (err == nil) {
				t.Fatalf("CheckAddr(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrNotLoopback) {
				t.Fatalf("CheckAddr(%q) = %v, want ErrNotLoopback", tc.addr, err)
			}
			if !tc.ok {
				_, err := Listen(context.Background(), Config{Addr: tc.addr, Status: func() any { return nil }})
				if !errors.Is(err, ErrNotLoopback) {
					t.Fatalf("Listen(%q) = %v, want ErrNotLoopback", tc.addr, err)
				}
			}
		})
	}
	for _, bad := range []string{"4040", "127.0.0.1", "127.0.0.1:70000"} {
		if CheckAddr(bad) == nil {
			t.Errorf("CheckAddr(%q) accepted", bad)
		}
	}
}

// TestPortTaken: a second dashboard on a taken port gets a free one, as
// two agents side by side do.
func TestPortTaken(t *testing.T) {
	first := startDashboard(t, nil)
	second := startDashboard(t, func(c *Config) { c.Addr = first.s.Addr().String() })
	if first.s.Addr().String() == second.s.Addr().String() {
		t.Fatal("both on one address")
	}
	if h, _, _ := net.SplitHostPort(second.s.Addr().String()); h != "127.0.0.1" {
		t.Fatalf("fallback on %s, want 127.0.0.1", second.s.Addr())
	}
	u, err := url.Parse(second.s.URL())
	if err != nil || u.Host != second.s.Addr().String() || u.Query().Get("token") == "" {
		t.Fatalf("URL %s", second.s.URL())
	}
}

// TestShutdownNoLeak ends a dashboard with a stream open: Serve returns,
// the stream ends, and no goroutine is left.
func TestShutdownNoLeak(t *testing.T) {
	before := goleak.IgnoreCurrent()
	r := startDashboard(t, nil)
	resp := openEvents(t, r, context.Background())
	ev := readEvents(t, resp.Body)
	<-ev
	r.shutdown(t)
	for range ev {
	}
	resp.Body.Close()
	r.client.Transport.(*http.Transport).CloseIdleConnections()
	if _, err := net.DialTimeout("tcp", r.s.Addr().String(), time.Second); err == nil {
		t.Error("still listening after shutdown")
	}
	goleak.VerifyNone(t, before)
}

func TestQRSVG(t *testing.T) {
	svg, err := qrSVG("pp1" + strings.Repeat("a", 194))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(svg, "<svg ") || !strings.HasSuffix(svg, "</svg>") || strings.Count(svg, "h1v1h-1z") < 100 {
		t.Fatalf("not a QR SVG: %.200s", svg)
	}
}
