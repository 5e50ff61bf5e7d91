package proxy

// The tinyproxy helper (startTinyproxy and what it uses, down to the marker
// below) needs only the standard library: copy it as is into another package's
// tests.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tinyproxyConfig is what a test wants of the real proxy.
type tinyproxyConfig struct {
	ConnectPorts []int  // the only ports CONNECT may reach (tinyproxy's ConnectPort); empty: any
	User, Pass   string // BasicAuth credentials it requires; "" none
}

// tinyproxy is a running tinyproxy on loopback.
type tinyproxy struct {
	URL *url.URL // http://127.0.0.1:port, without credentials
	Log string   // its log file, shown when a test fails
}

// startTinyproxy runs the real tinyproxy (Debian package tinyproxy) in the
// foreground on a free loopback port, with its config, log and pid file in a
// temporary directory and no syslog, accepting clients from 127.0.0.1 only.
// It is killed when the test ends. Without tinyproxy on PATH the test is
// skipped, unless PEERPORT_LAB=required, when it fails.
func startTinyproxy(t testing.TB, cfg tinyproxyConfig) *tinyproxy {
	t.Helper()
	bin := needTinyproxy(t)
	dir := t.TempDir()
	// The port is picked by binding and freeing it, so another process may
	// take it first: then tinyproxy exits, and we try another.
	var lastErr error
	for range 3 {
		tp, err := runTinyproxy(t, bin, dir, cfg)
		if err == nil {
			return tp
		}
		lastErr = err
	}
	t.Fatalf("tinyproxy: %v", lastErr)
	return nil
}

// needTinyproxy returns tinyproxy's path, or skips the test (fails it when
// PEERPORT_LAB=required) when it is not on PATH. Call it first in a test that
// starts several, so it skips with one line.
func needTinyproxy(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		if os.Getenv("PEERPORT_LAB") == "required" {
			t.Fatalf("tinyproxy not on PATH and PEERPORT_LAB=required: apt-get install tinyproxy")
		}
		t.Skip("tinyproxy not on PATH (apt-get install tinyproxy; PEERPORT_LAB=required makes this fail)")
	}
	return bin
}

func runTinyproxy(t testing.TB, bin, dir string, cfg tinyproxyConfig) (*tinyproxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = ln.Close()

	logPath := filepath.Join(dir, "tinyproxy."+port+".log")
	var conf strings.Builder
	fmt.Fprintf(&conf, "Port %s\nListen 127.0.0.1\nAllow 127.0.0.1\n", port)
	fmt.Fprintf(&conf, "Timeout 30\nMaxClients 50\nSyslog Off\nLogLevel Info\n")
	fmt.Fprintf(&conf, "LogFile %q\nPidFile %q\n", logPath, filepath.Join(dir, "tinyproxy."+port+".pid"))
	for _, p := range cfg.ConnectPorts {
		fmt.Fprintf(&conf, "ConnectPort %d\n", p)
	}
	if cfg.User != "" {
		fmt.Fprintf(&conf, "BasicAuth %s %s\n", cfg.User, cfg.Pass)
	}
	confPath := filepath.Join(dir, "tinyproxy."+port+".conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(dir, "tinyproxy."+port+".out"))
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own descriptor

	cmd := exec.Command(bin, "-d", "-c", confPath)
	cmd.Stdout, cmd.Stderr = out, out // a file: no copying goroutines
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	show := func() string {
		b, _ := os.ReadFile(logPath)
		o, _ := os.ReadFile(out.Name())
		return string(bytes.TrimSpace(append(o, b...)))
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("exited (%v) before listening on %s:\n%s", werr, addr, show())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not listening on %s after 5s:\n%s", addr, show())
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("tinyproxy log:\n%s", show())
		}
	})
	return &tinyproxy{URL: &url.URL{Scheme: "http", Host: addr}, Log: logPath}, nil
}

// (end of the tinyproxy helper)

func TestTinyproxy(t *testing.T) {
	needTinyproxy(t)
	echo := startEcho(t)
	other := startEcho(t) // a port tinyproxy must refuse
	_, p, _ := net.SplitHostPort(echo)
	echoPort, _ := strconv.Atoi(p)

	dial := func(t *testing.T, u *url.URL, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		return (&Dialer{Config: Config{URL: u}}).DialContext(ctx, "tcp", addr)
	}
	through := func(t *testing.T, u *url.URL) {
		t.Helper()
		c, err := dial(t, u, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if Via(c) != Redact(u) {
			t.Errorf("Via = %q, want %q", Via(c), Redact(u))
		}
		echoBack(t, c, 1<<20, false) // tinyproxy does not carry a half-close
	}

	t.Run("ConnectPort", func(t *testing.T) {
		tp := startTinyproxy(t, tinyproxyConfig{ConnectPorts: []int{echoPort}})
		through(t, tp.URL)
		c, err := dial(t, tp.URL, other)
		if err == nil {
			c.Close()
		}
		pe := checkErr(t, err, ErrProxyRefused)
		if pe.Status != 403 || !strings.Contains(err.Error(), "port 443") {
			t.Errorf("error %q: want a 403 naming port 443", err)
		}
		t.Log(err)
	})

	t.Run("BasicAuth", func(t *testing.T) {
		const pass = "tiny-S3cret"
		tp := startTinyproxy(t, tinyproxyConfig{ConnectPorts: []int{echoPort}, User: "ppuser", Pass: pass})
		for _, tt := range []struct {
			name string
			u    *url.URL
			has  string
		}{
			{name: "no credentials", u: tp.URL, has: "wants credentials (407"},
			{name: "wrong password", u: &url.URL{Scheme: "http", User: url.UserPassword("ppuser", "wrong-"+pass), Host: tp.URL.Host}, has: "rejected the credentials in the proxy URL (401"}, // tinyproxy's answer to a wrong password
		} {
			t.Run(tt.name, func(t *testing.T) {
				c, err := dial(t, tt.u, echo)
				if err == nil {
					c.Close()
				}
				checkErr(t, err, ErrProxyAuth, pass)
				if !strings.Contains(err.Error(), tt.has) {
					t.Errorf("error %q: want it to say %q", err, tt.has)
				}
				t.Log(err)
			})
		}
		t.Run("credentials", func(t *testing.T) {
			through(t, &url.URL{Scheme: "http", User: url.UserPassword("ppuser", pass), Host: tp.URL.Host})
		})
	})
}
