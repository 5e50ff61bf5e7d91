package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// roundTrip sends n bytes through c while reading them back, then
// half-closes and checks the echo ends with EOF.
func roundTrip(t *testing.T, c net.Conn, n int) {
	t.Helper()
	echoBack(t, c, n, true)
}

// echoBack sends n bytes through c while reading them back; with halfClose it
// then half-closes and expects EOF after them. (Not every proxy carries a
// half-close: tinyproxy ends the whole tunnel on the client's FIN.)
func echoBack(t *testing.T, c net.Conn, n int, halfClose bool) {
	t.Helper()
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(1, uint64(n)))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil && halfClose {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	var got []byte
	var err error
	if halfClose {
		got, err = io.ReadAll(c)
	} else {
		got = make([]byte, n)
		_, err = io.ReadFull(c, got)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo: got %d bytes, want the %d sent", len(got), len(data))
	}
}

func TestDialThroughProxy(t *testing.T) {
	echo := startEcho(t)
	tests := []struct {
		name       string
		opts       []proxyOption
		user, pass string // put in the proxy URL
		early      string
	}{
		{name: "plain"},
		{name: "basic auth", opts: []proxyOption{withAuth("alice", "s3cret")}, user: "alice", pass: "s3cret"},
		{name: "basic auth, escaped", opts: []proxyOption{withAuth("pp user", "p@ss:w/rd%")}, user: "pp user", pass: "p@ss:w/rd%"},
		{name: "early bytes", opts: []proxyOption{withEarly("hello from the far side\n")}, early: "hello from the far side\n"},
		{name: "https proxy", opts: []proxyOption{withTLS()}},
		{name: "https proxy, auth, early", opts: []proxyOption{withTLS(), withAuth("bob", "hunter2"), withEarly("hi")}, user: "bob", pass: "hunter2", early: "hi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, append(tt.opts, withRequests())...)
			u := p.URL
			if tt.user != "" {
				u = p.URLWith(tt.user, tt.pass)
				// Through text, as a user writes it.
				var err error
				if u, err = ParseURL(u.String()); err != nil {
					t.Fatal(err)
				}
			}
			d := &Dialer{Config: Config{URL: u}}
			if p.Roots != nil {
				d.TLSConfig = p.tlsConfig()
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", echo)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			if got, want := Via(c), Redact(u); got != want || (tt.pass != "" && strings.Contains(got, url.UserPassword(tt.user, tt.pass).String())) {
				t.Errorf("Via = %q, want %q (no password)", got, want)
			}
			r := <-p.requests
			if r.Host != echo || r.RequestURI != echo {
				t.Errorf("CONNECT %q, Host %q; want %q", r.RequestURI, r.Host, echo)
			}
			if ua := r.Header.Get("User-Agent"); ua != "peerport" {
				t.Errorf("User-Agent %q, want peerport", ua)
			}
			auth := r.Header.Get("Proxy-Authorization")
			if tt.user == "" && auth != "" {
				t.Errorf("Proxy-Authorization %q sent without user info", auth)
			}
			if want := "Basic " + base64.StdEncoding.EncodeToString([]byte(tt.user+":"+tt.pass)); tt.user != "" && auth != want {
				t.Errorf("Proxy-Authorization %q, want %q", auth, want)
			}

			if tt.early != "" {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				got := make([]byte, len(tt.early))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != tt.early {
					t.Fatalf("early bytes %q, %v; want %q", got, err, tt.early)
				}
			}
			roundTrip(t, c, 1<<20)
		})
	}
}

func TestDialErrors(t *testing.T) {
	echo := startEcho(t)
	const pass = "pa55-w0rd-XYZ"
	token := base64.StdEncoding.EncodeToString([]byte("carol:" + pass))
	tests := []struct {
		name   string
		opts   []proxyOption
		url    func(p *testProxy) *url.URL // nil: the proxy's URL, no user info
		want   error
		status int
		has    []string
	}{
		{
			name: "407 without credentials", opts: []proxyOption{withAuth("carol", pass)},
			want: ErrProxyAuth, status: 407,
			has: []string{"wants credentials (407 Proxy Authentication Required): put them in the proxy URL, http://user:pass@host:port"},
		},
		{
			name: "407 wrong credentials", opts: []proxyOption{withAuth("carol", "other")},
			url:  func(p *testProxy) *url.URL { return p.URLWith("carol", pass) },
			want: ErrProxyAuth, status: 407, has: []string{"rejected the credentials", "carol:***@"},
		},
		{
			name: "403", opts: []proxyOption{withStatus(403)},
			url:  func(p *testProxy) *url.URL { return p.URLWith("carol", pass) },
			want: ErrProxyRefused, status: 403, has: []string{"refused CONNECT " + echo, "403 Forbidden", "port 443"},
		},
		{
			name: "502", opts: []proxyOption{withStatus(502)},
			want: ErrProxyRefused, status: 502, has: []string{"502 Bad Gateway", "unable to reach"},
		},
		{
			name: "503", opts: []proxyOption{withStatus(503)},
			want: ErrProxyRefused, status: 503, has: []string{"503 Service Unavailable"},
		},
		{
			name: "closes mid-header", opts: []proxyOption{withMisbehave(answer("HTTP/1.1 200 Connection est"))},
			want: ErrBadProxyResponse, has: []string{"closed before the end of the header"},
		},
		{
			name: "closes mid-headers", opts: []proxyOption{withMisbehave(answer("HTTP/1.1 200 OK\r\nVia: x\r\n"))},
			want: ErrBadProxyResponse, has: []string{"closed before the end of the header"},
		},
		{
			name: "closes without a word", opts: []proxyOption{withMisbehave(answer(""))},
			want: ErrBadProxyResponse,
		},
		{
			name: "not HTTP", opts: []proxyOption{withMisbehave(answer("SSH-2.0-OpenSSH_9.6\r\n\r\n"))},
			want: ErrBadProxyResponse, has: []string{"bad answer to CONNECT " + echo},
		},
		{
			name: "header too long", opts: []proxyOption{withMisbehave(hugeHeader)},
			want: ErrBadProxyResponse, has: []string{"header longer than 64 KiB"},
		},
		{
			name: "not a proxy but an echo server",
			url: func(*testProxy) *url.URL {
				return &url.URL{Scheme: "http", User: url.UserPassword("carol", pass), Host: echo}
			},
			want: ErrBadProxyResponse,
		},
		{
			name: "nothing listening",
			url: func(*testProxy) *url.URL {
				return &url.URL{Scheme: "http", User: url.UserPassword("carol", pass), Host: freeAddr(t)}
			},
			want: ErrProxyUnreachable, has: []string{"unreachable", "connection refused"},
		},
		{
			name: "https proxy, certificate not trusted", opts: []proxyOption{withTLS()},
			url:  func(p *testProxy) *url.URL { return p.URLWith("carol", pass) },
			want: ErrProxyUnreachable, has: []string{"TLS handshake", "certificate"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, tt.opts...)
			u := p.URL
			if tt.url != nil {
				u = tt.url(p)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := (&Dialer{Config: Config{URL: u}}).DialContext(ctx, "tcp", echo)
			if err == nil {
				c.Close()
			}
			pe := checkErr(t, err, tt.want, pass, token, "carol:"+pass)
			if pe.Status != tt.status {
				t.Errorf("Status %d, want %d", pe.Status, tt.status)
			}
			for _, s := range tt.has {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if want := Redact(u); !strings.Contains(err.Error(), "proxy "+want) {
				t.Errorf("error %q does not name the proxy %s", err, want)
			}
			t.Log(err)
		})
	}
}

func TestDialContext(t *testing.T) {
	echo := startEcho(t)
	stalling := startProxy(t, withMisbehave(stall))
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{
			name: "cancelled while the proxy stalls",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(t.Context())
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name: "deadline while the proxy stalls",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(t.Context(), 150*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
		{
			name: "cancelled before the dial",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				return ctx, cancel
			},
			want: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			start := time.Now()
			c, err := (&Dialer{Config: Config{URL: stalling.URL}}).DialContext(ctx, "tcp", echo)
			if err == nil {
				c.Close()
				t.Fatal("dial through a stalling proxy succeeded")
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v to give up", took)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error %q is not %v", err, tt.want)
			}
			var pe *Error
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), stalling.URL.String()) {
				t.Errorf("error %q is not an *Error naming the proxy", err)
			}
		})
	}

	t.Run("deadline and context released after the dial", func(t *testing.T) {
		p := startProxy(t)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		c, err := (&Dialer{Config: Config{URL: p.URL}}).DialContext(ctx, "tcp", echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cancel()
		time.Sleep(400 * time.Millisecond) // past the context's deadline
		roundTrip(t, c, 4096)
	})
}

func TestDialDirect(t *testing.T) {
	echo := startEcho(t)
	dead := "http://" + freeAddr(t)
	tests := []struct {
		name string
		env  map[string]string
	}{
		{name: "no proxy in the environment"},
		{name: "NO_PROXY", env: map[string]string{"HTTPS_PROXY": dead, "NO_PROXY": "127.0.0.0/8"}},
		{name: "loopback destination", env: map[string]string{"HTTPS_PROXY": dead}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{Config: Config{Getenv: env(tt.env)}, Forward: &net.Dialer{Timeout: 5 * time.Second}}
			c, err := d.DialContext(t.Context(), "tcp", echo)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if v := Via(c); v != "" {
				t.Errorf("Via = %q for a direct connection", v)
			}
			roundTrip(t, c, 4096)
		})
	}
}

func TestDialNetwork(t *testing.T) {
	d := &Dialer{Config: Config{URL: &url.URL{Scheme: "http", Host: "127.0.0.1:9"}}}
	_, err := d.DialContext(t.Context(), "udp", "127.0.0.1:53")
	if err == nil || !strings.Contains(err.Error(), "TCP only") {
		t.Fatalf("udp through a proxy: %v, want an error", err)
	}
}

func TestVia(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t)
	u := p.URLWith("dave", "secret-pw")
	c, err := (&Dialer{Config: Config{URL: u}}).DialContext(t.Context(), "tcp", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := "http://dave:***@" + p.URL.Host
	if got := Via(c); got != want {
		t.Errorf("Via = %q, want %q", got, want)
	}
	// Through a TLS client on top, as the agent dials the broker.
	if got := Via(tls.Client(c, &tls.Config{})); got != want {
		t.Errorf("Via(tls.Client) = %q, want %q", got, want)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Via(a); got != "" {
		t.Errorf("Via(pipe) = %q", got)
	}
	if got := Via(nil); got != "" {
		t.Errorf("Via(nil) = %q", got)
	}
}

// TestReadAnswer runs the answer parser on fixed bytes.
func TestReadAnswer(t *testing.T) {
	proxyURL := &url.URL{Scheme: "http", User: url.UserPassword("erin", "sekr1t"), Host: "proxy.test:3128"}
	x := newExchange(proxyURL, "broker.test:443")
	tests := []struct {
		name   string
		in     string
		rest   string // tunnel bytes returned, on success
		want   error  // nil: success
		status int
		has    string
	}{
		{name: "200", in: "HTTP/1.1 200 Connection established\r\n\r\n"},
		{name: "200 HTTP/1.0, no reason", in: "HTTP/1.0 200\r\n\r\n"},
		{name: "200 bare LF", in: "HTTP/1.1 200 OK\nVia: 1.1 p\n\n"},
		{name: "200 with tunnel bytes", in: "HTTP/1.1 200 OK\r\nProxy-Agent: x\r\n\r\nSSH-2.0-hello\r\n", rest: "SSH-2.0-hello\r\n"},
		{name: "200 with Content-Length ignored", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdefgh", rest: "abcdefgh"},
		{name: "204", in: "HTTP/1.1 204 No Content\r\n\r\nxy", rest: "xy"},
		{name: "100 then 200", in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nz", rest: "z"},
		{name: "407", in: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n", want: ErrProxyAuth, status: 407, has: "rejected the credentials"},
		{name: "401", in: "HTTP/1.1 401 Unauthorized\r\n\r\n", want: ErrProxyAuth, status: 401, has: "rejected the credentials in the proxy URL (401 Unauthorized)"},
		{name: "403", in: "HTTP/1.1 403 Access violation\r\n\r\n", want: ErrProxyRefused, status: 403, has: "(403 Access violation): the proxy may allow CONNECT only to port 443"},
		{name: "500", in: "HTTP/1.0 500 Unable to connect\r\n\r\n", want: ErrProxyRefused, status: 500, has: "(500 Unable to connect): the proxy may be unable to reach broker.test:443"},
		{name: "101", in: "HTTP/1.1 101 Switching Protocols\r\n\r\n", want: ErrProxyRefused, status: 101},
		{name: "301", in: "HTTP/1.1 301 Moved\r\nLocation: x\r\n\r\n", want: ErrProxyRefused, status: 301, has: "(301 Moved)"},
		{name: "reason sanitized", in: "HTTP/1.1 418 \x1b[31mred\x1b[0m\r\n\r\n", want: ErrProxyRefused, status: 418, has: "418 ?[31mred?[0m"},
		{name: "empty", in: "", want: ErrBadProxyResponse, has: "closed before the end of the header"},
		{name: "truncated", in: "HTTP/1.1 200 OK\r\nVia: x", want: ErrBadProxyResponse, has: "closed before the end of the header"},
		{name: "garbage", in: "\x00\x01\x02garbage\r\n\r\n", want: ErrBadProxyResponse},
		{name: "bad status code", in: "HTTP/1.1 2x0 OK\r\n\r\n", want: ErrBadProxyResponse},
		{name: "status 000", in: "HTTP/1.1 000 Zero\r\n\r\n", want: ErrBadProxyResponse, has: "status 000 out of range"},
		{name: "status 999", in: "HTTP/1.1 999 Nine\r\n\r\n", want: ErrBadProxyResponse, has: "status 999 out of range"},
		{name: "header too long", in: "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Pad: aaaaaaaaaaaaaaaa\r\n", 4000), want: ErrBadProxyResponse, has: "header longer than 64 KiB"},
		{name: "request echoed", in: x.request(), want: ErrBadProxyResponse},
		{name: "password echoed in the reason", in: "HTTP/1.1 403 sekr1t\r\n\r\n", want: ErrProxyRefused, status: 403, has: "(403 ***)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rest, err := x.readAnswer(strings.NewReader(tt.in))
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if string(rest) != tt.rest {
					t.Errorf("rest %q, want %q", rest, tt.rest)
				}
				return
			}
			pe := checkErr(t, err, tt.want, "sekr1t", x.token)
			if pe.Status != tt.status {
				t.Errorf("Status %d, want %d", pe.Status, tt.status)
			}
			if !strings.Contains(err.Error(), tt.has) {
				t.Errorf("error %q does not say %q", err, tt.has)
			}
		})
	}

	// The parser never reads past its bound.
	long := strings.NewReader("HTTP/1.1 200 OK\r\n" + strings.Repeat("X: y\r\n", 100000))
	if _, err := x.readAnswer(long); !errors.Is(err, ErrBadProxyResponse) {
		t.Fatalf("long header: %v", err)
	}
	if read := int(long.Size()) - long.Len(); read > maxHeader {
		t.Errorf("read %d bytes of a long header, bound %d", read, maxHeader)
	}
}

// TestErrorStatusText checks the status text is the proxy's own.
func TestErrorStatusText(t *testing.T) {
	x := newExchange(&url.URL{Scheme: "http", Host: "p:1"}, "b:443")
	_, err := x.readAnswer(strings.NewReader("HTTP/1.1 407\r\n\r\n"))
	want := "proxy http://p:1 wants credentials (407 " + http.StatusText(407) + "): put them in the proxy URL, http://user:pass@host:port"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}
