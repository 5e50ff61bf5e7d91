package mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/secure"
)

func testLog(t *testing.T) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel) // exercise the adapter
	return l.WithField("test", t.Name())
}

func TestConfigValid(t *testing.T) {
	c := Config(testLog(t))
	if err := yamux.VerifyConfig(c); err != nil {
		t.Fatal(err)
	}
	if c.MaxStreamWindowSize != StreamWindow || !c.EnableKeepAlive || c.AcceptBacklog != MaxStreams {
		t.Errorf("config %+v does not carry the package's tuning", c)
	}
}

// transports run the same session tests over an in-memory pipe, loopback
// TCP, and the TLS peer channel over loopback TCP, as in production.
var transports = []struct {
	name string
	pair func(t *testing.T) (client, server net.Conn)
}{
	{"pipe", func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
	{"tls", tlsPair},
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		t.Fatal(r.err)
	}
	return c, r.c
}

func tlsPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	sharer, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	connector, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := secure.PeerServerConfig(sharer)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := secure.PeerClientConfig(connector, sharer.ID())
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := tcpPair(t)
	cc, sc := tls.Client(c1, ccfg), tls.Server(c2, scfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(ctx) }()
	cerr := cc.HandshakeContext(ctx)
	if serr := <-errc; cerr != nil || serr != nil {
		c1.Close()
		c2.Close()
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	return cc, sc
}

// sessions returns a connected client and server session, closed at the end.
func sessions(t *testing.T, pair func(*testing.T) (net.Conn, net.Conn)) (client, server *yamux.Session) {
	t.Helper()
	c1, c2 := pair(t)
	client, err := Client(c1, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	server, err = Server(c2, testLog(t))
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

func TestSession(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testSession(t, tr.pair) })
	}
}

// testSession runs one stream the way the agents do: header, status, then a
// 4 MiB echo; the connector half-closes, the sharer sees EOF and still
// answers with a trailer before closing its side.
func testSession(t *testing.T, pair func(*testing.T) (net.Conn, net.Conn)) {
	client, server := sessions(t, pair)
	const trailer = "bye"
	proof := bytes.Repeat([]byte{7}, 32)

	srvErr := make(chan error, 1)
	go func() {
		srvErr <- func() error {
			st, err := server.AcceptStream()
			if err != nil {
				return fmt.Errorf("accept: %w", err)
			}
			defer st.Close()
			h, err := ReadHeader(st)
			if err != nil {
				return err
			}
			if h.Share != "web" || !bytes.Equal(h.Proof, proof) {
				return fmt.Errorf("header %+v", h)
			}
			if err := WriteStatus(st, StatusOK, ""); err != nil {
				return err
			}
			// Echo until the connector's half-close, then write after it.
			if _, err := io.Copy(st, st); err != nil {
				return fmt.Errorf("echo: %w", err)
			}
			if _, err := io.WriteString(st, trailer); err != nil {
				return fmt.Errorf("write after half-close: %w", err)
			}
			return nil
		}()
	}()

	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := WriteHeader(st, Header{Share: "web", Proof: proof}); err != nil {
		t.Fatal(err)
	}
	if err := ReadStatus(st); err != nil {
		t.Fatal(err)
	}

	payload := make([]byte, 4<<20)
	rand.Read(payload)
	wErr := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		if err == nil {
			err = st.Close() // a half-close: we keep reading
		}
		wErr <- err
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-wErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("sharer: %v", err)
	}
	if len(got) != len(payload)+len(trailer) || !bytes.Equal(got[:len(payload)], payload) || string(got[len(payload):]) != trailer {
		t.Fatalf("got %d bytes back, want the %d-byte payload and %q", len(got), len(payload), trailer)
	}
}

func TestSessionManyStreams(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			client, server := sessions(t, tr.pair)
			const streams, size = 16, 64 << 10
			go func() {
				for {
					st, err := server.AcceptStream()
					if err != nil {
						return // session closed
					}
					go func() {
						defer st.Close()
						h, err := ReadHeader(st)
						if err != nil {
							WriteStatus(st, StatusBadHeader, err.Error())
							return
						}
						if h.Share != "echo" {
							WriteStatus(st, StatusDenied, "no share "+h.Share)
							return
						}
						WriteStatus(st, StatusOK, "")
						io.Copy(st, st)
					}()
				}
			}()

			errc := make(chan error, streams+1)
			for i := range streams {
				go func() {
					errc <- func() error {
						st, err := client.OpenStream()
						if err != nil {
							return err
						}
						defer st.Close()
						if err := WriteHeader(st, Header{Share: "echo"}); err != nil {
							return err
						}
						if err := ReadStatus(st); err != nil {
							return err
						}
						want := bytes.Repeat([]byte{byte(i)}, size)
						go func() { st.Write(want); st.Close() }()
						got, err := io.ReadAll(st)
						if err != nil {
							return err
						}
						if !bytes.Equal(got, want) {
							return fmt.Errorf("stream %d: %d bytes back, want %d", i, len(got), len(want))
						}
						return nil
					}()
				}()
			}
			// A stream for an unknown share is refused with a status, and
			// the session carries on.
			go func() {
				errc <- func() error {
					st, err := client.OpenStream()
					if err != nil {
						return err
					}
					defer st.Close()
					if err := WriteHeader(st, Header{Share: "nope"}); err != nil {
						return err
					}
					var se *StatusError
					if err := ReadStatus(st); !errors.As(err, &se) || se.Status != StatusDenied {
						return fmt.Errorf("unknown share: %v, want denied", err)
					}
					return nil
				}()
			}()
			for range streams + 1 {
				if err := <-errc; err != nil {
					t.Error(err)
				}
			}
		})
	}
}
