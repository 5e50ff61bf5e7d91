package proxy

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestConfigFor(t *testing.T) {
	const broker = "broker.example.com:443"
	tests := []struct {
		name     string
		explicit string            // Config.URL, "" for none
		env      map[string]string // the environment
		addr     string            // destination
		want     string            // proxy chosen (Redact form); "" direct
		wantErr  error             // sentinel; nil for success
		errHas   string            // text the error must hold
	}{
		{name: "nothing set", addr: broker},
		{name: "HTTPS_PROXY", env: map[string]string{"HTTPS_PROXY": "http://proxy.corp:3128"}, addr: broker, want: "http://proxy.corp:3128"},
		{name: "https_proxy lower case", env: map[string]string{"https_proxy": "http://lower:3128"}, addr: broker, want: "http://lower:3128"},
		{name: "upper case wins", env: map[string]string{"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}, addr: broker, want: "http://upper:1"},
		{name: "ALL_PROXY", env: map[string]string{"ALL_PROXY": "http://all:3128"}, addr: broker, want: "http://all:3128"},
		{name: "all_proxy lower case", env: map[string]string{"all_proxy": "http://all:3128"}, addr: broker, want: "http://all:3128"},
		{name: "HTTPS_PROXY over ALL_PROXY", env: map[string]string{"HTTPS_PROXY": "http://https:1", "ALL_PROXY": "http://all:2"}, addr: broker, want: "http://https:1"},
		{name: "HTTP_PROXY alone is not used", env: map[string]string{"HTTP_PROXY": "http://plain:3128"}, addr: broker},
		{name: "bare host:port is http", env: map[string]string{"HTTPS_PROXY": "proxy.corp:3128"}, addr: broker, want: "http://proxy.corp:3128"},
		{name: "http default port 80", env: map[string]string{"HTTPS_PROXY": "http://proxy.corp"}, addr: broker, want: "http://proxy.corp:80"},
		{name: "https default port 443", env: map[string]string{"HTTPS_PROXY": "https://proxy.corp/"}, addr: broker, want: "https://proxy.corp:443"},
		{name: "credentials kept, redacted", env: map[string]string{"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128"}, addr: broker, want: "http://alice:***@proxy.corp:3128"},
		{name: "IPv6 proxy", env: map[string]string{"HTTPS_PROXY": "http://[2001:db8::5]:3128"}, addr: broker, want: "http://[2001:db8::5]:3128"},

		{name: "NO_PROXY domain matches subdomain", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, addr: broker},
		{name: "NO_PROXY domain matches itself", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, addr: "example.com:443"},
		{name: "NO_PROXY domain is a suffix of labels, not text", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, addr: "notexample.com:443", want: "http://p:1"},
		{name: "NO_PROXY .domain matches subdomain", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, addr: broker},
		{name: "NO_PROXY .domain not the domain itself", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, addr: "example.com:443", want: "http://p:1"},
		{name: "NO_PROXY list with spaces", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.org, example.com"}, addr: broker},
		{name: "NO_PROXY list not matching", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.org,example.net"}, addr: broker, want: "http://p:1"},
		{name: "NO_PROXY star", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, addr: broker},
		{name: "no_proxy lower case", env: map[string]string{"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, addr: broker},
		{name: "NO_PROXY applies to ALL_PROXY", env: map[string]string{"ALL_PROXY": "http://p:1", "NO_PROXY": "example.com"}, addr: broker},
		{name: "NO_PROXY CIDR inside", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, addr: "10.20.30.40:7000"},
		{name: "NO_PROXY CIDR outside", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, addr: "11.0.0.1:7000", want: "http://p:1"},
		{name: "NO_PROXY IPv6 CIDR", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "2001:db8::/32"}, addr: "[2001:db8::9]:443"},
		{name: "NO_PROXY IP", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "192.0.2.7"}, addr: "192.0.2.7:443"},
		{name: "NO_PROXY other IP", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "192.0.2.7"}, addr: "192.0.2.8:443", want: "http://p:1"},
		{name: "NO_PROXY host:port, that port", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "broker.example.com:7000"}, addr: "broker.example.com:7000"},
		{name: "NO_PROXY host:port, other port", env: map[string]string{"HTTPS_PROXY": "http://p:1", "NO_PROXY": "broker.example.com:7000"}, addr: broker, want: "http://p:1"},
		{name: "loopback is direct", env: map[string]string{"HTTPS_PROXY": "http://p:1"}, addr: "127.0.0.1:7000"},
		{name: "localhost is direct", env: map[string]string{"HTTPS_PROXY": "http://p:1"}, addr: "localhost:7000"},

		{name: "explicit URL", explicit: "http://explicit:8080", addr: broker, want: "http://explicit:8080"},
		{name: "explicit URL wins over environment", explicit: "http://explicit:8080", env: map[string]string{"HTTPS_PROXY": "http://p:1"}, addr: broker, want: "http://explicit:8080"},
		{name: "explicit URL ignores NO_PROXY", explicit: "http://explicit:8080", env: map[string]string{"NO_PROXY": "*"}, addr: broker, want: "http://explicit:8080"},
		{name: "explicit URL applies to loopback", explicit: "http://explicit:8080", addr: "127.0.0.1:7000", want: "http://explicit:8080"},
		{name: "explicit URL gets its port", explicit: "https://explicit", addr: broker, want: "https://explicit:443"},
		{name: "explicit socks5", explicit: "socks5://explicit:1080", addr: broker, wantErr: ErrUnsupportedScheme, errHas: `"socks5" is not supported`},

		{name: "ALL_PROXY socks5 refused", env: map[string]string{"ALL_PROXY": "socks5://p:1080"}, addr: broker, wantErr: ErrUnsupportedScheme, errHas: "ALL_PROXY: proxy"},
		{name: "HTTPS_PROXY socks5h refused", env: map[string]string{"HTTPS_PROXY": "socks5h://p:1080"}, addr: broker, wantErr: ErrUnsupportedScheme, errHas: "HTTPS_PROXY"},
		{name: "socks5 but NO_PROXY", env: map[string]string{"ALL_PROXY": "socks5://p:1080", "NO_PROXY": "example.com"}, addr: broker},
		{name: "garbage port", env: map[string]string{"HTTPS_PROXY": "http://p:99999"}, addr: broker, wantErr: ErrBadProxyURL, errHas: "out of range"},
		{name: "garbage text", env: map[string]string{"HTTPS_PROXY": "http://[::1"}, addr: broker, wantErr: ErrBadProxyURL, errHas: `want http://[user:pass@]host:port`},
		{name: "garbage with a path", env: map[string]string{"https_proxy": "http://p:3128/some/path"}, addr: broker, wantErr: ErrBadProxyURL, errHas: "https_proxy"},
		{name: "ftp scheme", env: map[string]string{"HTTPS_PROXY": "ftp://p:21"}, addr: broker, wantErr: ErrUnsupportedScheme},

		{name: "destination without port", env: map[string]string{"HTTPS_PROXY": "http://p:1"}, addr: "broker.example.com", errHas: "want host:port"},
		{name: "destination with CRLF", explicit: "http://p:1", addr: "a\r\nX-Evil: 1:443", errHas: "want host:port"},
		{name: "destination with CR", explicit: "http://p:1", addr: "evil\r\n.com:443", errHas: "bad character"},
		{name: "destination port name", explicit: "http://p:1", addr: "broker.example.com:https", errHas: "port must be a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Getenv: env(tt.env)}
			if tt.explicit != "" {
				c.URL = mustURL(t, tt.explicit)
			}
			got, err := c.For(tt.addr)
			if tt.wantErr != nil || tt.errHas != "" {
				if err == nil {
					t.Fatalf("For(%q) = %v, want an error", tt.addr, got)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("error %q is not %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("error %q does not say %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("For(%q): %v", tt.addr, err)
			}
			if s := Redact(got); s != tt.want {
				t.Errorf("For(%q) = %q, want %q", tt.addr, s, tt.want)
			}
		})
	}
}

func TestConfigForDefaultGetenv(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://from-os:3128")
	t.Setenv("NO_PROXY", "")
	got, err := Config{}.For("broker.example.com:443")
	if err != nil || Redact(got) != "http://from-os:3128" {
		t.Fatalf("For = %v, %v; want http://from-os:3128 from os.Getenv", got, err)
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		in       string
		want     string // Redact of the result
		user     string // decoded user name
		pass     string // decoded password
		wantErr  error
		errHas   string
		errLacks string // a secret the error must not show
	}{
		{in: "http://proxy:3128", want: "http://proxy:3128"},
		{in: "  HTTP://Proxy:3128  ", want: "http://Proxy:3128"},
		{in: "proxy:3128", want: "http://proxy:3128"},
		{in: "proxy", want: "http://proxy:80"},
		{in: "https://proxy", want: "https://proxy:443"},
		{in: "http://proxy:3128/", want: "http://proxy:3128"},
		{in: "http://127.0.0.1:3128", want: "http://127.0.0.1:3128"},
		{in: "[::1]:3128", want: "http://[::1]:3128"},
		{in: "http://alice:s3cret@proxy:3128", want: "http://alice:***@proxy:3128", user: "alice", pass: "s3cret"},
		{in: "http://alice@proxy:3128", want: "http://alice@proxy:3128", user: "alice"},
		{in: "http://us%40er:p%3Ass%2Fw%40rd@proxy:3128", want: "http://us%40er:***@proxy:3128", user: "us@er", pass: "p:ss/w@rd"},
		{in: "alice:s3cret@proxy:3128", want: "http://alice:***@proxy:3128", user: "alice", pass: "s3cret"},

		{in: "", wantErr: ErrBadProxyURL, errHas: "no host"},
		{in: "http://", wantErr: ErrBadProxyURL, errHas: "no host"},
		{in: "http://proxy:0", wantErr: ErrBadProxyURL, errHas: "port 0 out of range"},
		{in: "http://proxy:65536", wantErr: ErrBadProxyURL, errHas: "out of range"},
		{in: "http://proxy:abc", wantErr: ErrBadProxyURL, errHas: `invalid port`},
		{in: "http://proxy:3128?x=1", wantErr: ErrBadProxyURL, errHas: "no path, query or fragment"},
		{in: "socks5://proxy:1080", wantErr: ErrUnsupportedScheme, errHas: `proxy "socks5://proxy:1080": want http://[user:pass@]host:port`},
		{in: "socks4://alice:s3cret@proxy:1080", wantErr: ErrUnsupportedScheme, errLacks: "s3cret"},
		{in: "http://alice:s3cret@proxy:99999", wantErr: ErrBadProxyURL, errHas: `"http://alice:***@proxy:99999"`, errLacks: "s3cret"},
		{in: "http://alice:s3cret@proxy:abc", wantErr: ErrBadProxyURL, errHas: `"http://***@proxy:abc"`, errLacks: "s3cret"},
		{in: "http://alice:s3/cr%zzet@proxy:3128", wantErr: ErrBadProxyURL, errLacks: "s3"},
		{in: "http://alice:s3cret@[::1", wantErr: ErrBadProxyURL, errLacks: "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParseURL(tt.in)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ParseURL = %v, want an error", u)
				}
				var pe *Error
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &pe) {
					t.Errorf("error %q: want an *Error that is %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("error %q does not say %q", err, tt.errHas)
				}
				if tt.errLacks != "" && strings.Contains(err.Error(), tt.errLacks) {
					t.Errorf("error %q shows %q", err, tt.errLacks)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := Redact(u); got != tt.want {
				t.Errorf("ParseURL = %q, want %q", got, tt.want)
			}
			pass, _ := u.User.Password()
			if u.User.Username() != tt.user || pass != tt.pass {
				t.Errorf("user info %q:%q, want %q:%q", u.User.Username(), pass, tt.user, tt.pass)
			}
			// Parsing is idempotent.
			if again, err := ParseURL(u.String()); err != nil || again.String() != u.String() {
				t.Errorf("ParseURL(%q) = %v, %v; want the same URL", u, again, err)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"http://proxy:3128":              "http://proxy:3128",
		"http://alice@proxy:3128":        "http://alice@proxy:3128",
		"http://alice:s3cret@proxy:3128": "http://alice:***@proxy:3128",
		"http://alice:@proxy:3128":       "http://alice:***@proxy:3128",
	} {
		if got := Redact(mustURL(t, in)); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if Redact(nil) != "" {
		t.Error("Redact(nil) is not empty")
	}
	for in, want := range map[string]string{
		"http://alice:s3cret@proxy:abc": "http://***@proxy:abc",
		"alice:s3/c@ret@proxy":          "***@proxy",
		"http://proxy:abc":              "http://proxy:abc",
	} {
		if got := redactText(in); got != want {
			t.Errorf("redactText(%q) = %q, want %q", in, got, want)
		}
	}
}
