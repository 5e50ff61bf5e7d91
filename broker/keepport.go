package broker

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PortFile, in the state dir, keeps the port a KeepPort broker chose.
const PortFile = "port"

// listen binds o.Listen. With KeepPort and port 0 it takes the port it
// chose the last time, kept in the state dir, so that the URL and the
// tickets made from it stay valid across restarts (an embedded broker);
// when that port is taken it takes a new one and keeps that instead.
func listen(ctx context.Context, o Options) (net.Listener, error) {
	var lc net.ListenConfig
	host, port, err := net.SplitHostPort(o.Listen)
	if !o.KeepPort || err != nil || port != "0" {
		return lc.Listen(ctx, "tcp", o.Listen)
	}
	path := filepath.Join(o.StateDir, PortFile)
	if b, err := os.ReadFile(path); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 && p <= 65535 {
			ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(p)))
			if err == nil {
				return ln, nil
			}
			o.Log.WithError(err).Warnf("port %d, kept from the last run, is taken: taking another, so the URL and tickets change", p)
		}
	}
	ln, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		return nil, err
	}
	p := ln.Addr().(*net.TCPAddr).Port
	if err := os.WriteFile(path, []byte(strconv.Itoa(p)+"\n"), 0o600); err != nil {
		o.Log.WithError(fmt.Errorf("keep port: %w", err)).Warn("the next run takes a new port, and makes new tickets")
	}
	return ln, nil
}
