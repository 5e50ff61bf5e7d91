package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// ctlClient is a lightweight control client speaking internal/proto, so the
// bench can register thousands of agents without thousands of processes.
type ctlClient struct {
	id    *secure.Identity
	conn  *tls.Conn
	admit [32]byte
	// done is closed when the session register started has ended (its
	// connection closed).
	done chan struct{}
}

// dialCtl logs in at u.Addr as a new agent.
func dialCtl(ctx context.Context, u secure.BrokerURL, token string) (*ctlClient, error) {
	id, err := secure.NewIdentity()
	if err != nil {
		return nil, err
	}
	return dialCtlAs(ctx, u, token, id)
}

// dialCtlAs logs in at u.Addr as id (an agent coming back, e.g. after its
// broker node died).
func dialCtlAs(ctx context.Context, u secure.BrokerURL, token string, id *secure.Identity) (*ctlClient, error) {
	cfg, err := secure.ControlClientConfig(id, u.Pin)
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := d.DialContext(dctx, "tcp", u.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	c := &ctlClient{id: id, conn: raw.(*tls.Conn)}
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := proto.Write(c.conn, &proto.Hello{Token: token, Version: "bench"}); err != nil {
		c.conn.Close()
		return nil, err
	}
	m, err := proto.Read(c.conn, 0)
	if err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	if _, ok := m.(*proto.Welcome); !ok {
		c.conn.Close()
		return nil, fmt.Errorf("hello answered with %#v", m)
	}
	c.conn.SetDeadline(time.Time{})
	return c, nil
}

// register announces share "s" (with the admit key of a new ticket, or of
// the one c already has) and then answers every introduction with a dummy
// candidate until the connection closes.
func (c *ctlClient) register(u secure.BrokerURL) error {
	if c.admit == ([32]byte{}) {
		t, err := secure.NewTicket(u.Addr, u.Pin, c.id.ID(), "s")
		if err != nil {
			return err
		}
		c.admit = t.AdmitKey()
	}
	h := sha256.Sum256(c.admit[:]) // the ticket's AdmitHash
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := proto.Write(c.conn, &proto.Register{ID: 1, Share: "s", AdmitHash: h[:]}); err != nil {
		return err
	}
	m, err := proto.Read(c.conn, 0)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if res, ok := m.(*proto.Result); !ok || res.Code != "" {
		return fmt.Errorf("register answered with %#v", m)
	}
	c.conn.SetDeadline(time.Time{})
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		for {
			m, err := proto.Read(c.conn, 0)
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *proto.Intro:
				proto.Write(c.conn, &proto.IntroReply{Intro: m.Intro, Port: 9,
					Candidates: []proto.Candidate{{Kind: proto.KindHost, Addr: "127.0.0.1:9"}}})
			case *proto.Ping:
				proto.Write(c.conn, &proto.Pong{Nonce: m.Nonce})
			}
		}
	}()
	return nil
}

// registerMany registers n sharers at u, 32 at a time (each a TLS handshake,
// a Hello and a Register), and returns them with the time it took. On an
// error it closes those it registered.
func registerMany(ctx context.Context, u secure.BrokerURL, n int) ([]*ctlClient, time.Duration, error) {
	clients := make([]*ctlClient, n)
	var next atomic.Int64
	var firstErr error
	var errMu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dialCtl(ctx, u, u.Token)
				if err == nil {
					err = c.register(u)
					clients[i] = c
				}
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("agent %d: %w", i, err)
					}
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		closeClients(clients)
		return nil, el, firstErr
	}
	return clients, el, nil
}

func closeClients(cs []*ctlClient) {
	for _, c := range cs {
		if c != nil {
			c.conn.Close()
		}
	}
}

// introStats are the introductions of one introLoad.
type introStats struct {
	ok, failed int64
	elapsed    time.Duration
	lat        []time.Duration // Connect to ConnectReply, of those that succeeded
	firstFail  string          // the code and message of the first that failed
}

func (s introStats) perSec() float64 { return float64(s.ok) / s.elapsed.Seconds() }

// introLoad runs guests new guests (ticket holders, no token) at u for d;
// each keeps one Connect in flight, to sharers picked in turn across sharers.
func introLoad(ctx context.Context, u secure.BrokerURL, sharers []*ctlClient, guests int, d time.Duration) (introStats, error) {
	ids, err := newIdentities(guests)
	if err != nil {
		return introStats{}, err
	}
	return introLoadAs(ctx, u, sharers, ids, d)
}

func newIdentities(n int) ([]*secure.Identity, error) {
	ids := make([]*secure.Identity, n)
	for i := range ids {
		var err error
		if ids[i], err = secure.NewIdentity(); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// introLoadAs is introLoad with one guest per identity of ids: guests that
// come back to the same sharers, in the same order, in every run.
func introLoadAs(ctx context.Context, u secure.BrokerURL, sharers []*ctlClient, ids []*secure.Identity, d time.Duration) (introStats, error) {
	guests := len(ids)
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var st introStats
	var wg sync.WaitGroup
	n := len(sharers)
	dl := time.Now().Add(d)
	errc := make(chan error, guests)
	t0 := time.Now()
	for g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialCtlAs(ctx, u, "", ids[g])
			if err != nil {
				errc <- err
				return
			}
			defer c.conn.Close()
			c.conn.SetDeadline(dl.Add(30 * time.Second))
			var lat []time.Duration
			defer func() {
				mu.Lock()
				st.lat = append(st.lat, lat...)
				mu.Unlock()
			}()
			for i := 0; time.Now().Before(dl); i++ {
				s := sharers[(g*7919+i*104729)%n]
				start := time.Now()
				if err := proto.Write(c.conn, &proto.Connect{ID: uint64(i + 1), Sharer: s.id.ID().String(), Share: "s", Admit: s.admit[:]}); err != nil {
					errc <- err
					return
				}
				m, err := proto.Read(c.conn, 0)
				if err != nil {
					errc <- err
					return
				}
				if rep, isRep := m.(*proto.ConnectReply); isRep && rep.Code == "" {
					lat = append(lat, time.Since(start))
					ok.Add(1)
				} else {
					if failed.Add(1) == 1 {
						mu.Lock()
						st.firstFail = fmt.Sprintf("%#v", m)
						if isRep {
							st.firstFail = rep.Code + ": " + rep.Message
						}
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	st.elapsed = time.Since(t0)
	close(errc)
	if err := <-errc; err != nil {
		return st, fmt.Errorf("introductions: %w", err)
	}
	st.ok, st.failed = ok.Load(), failed.Load()
	if st.ok == 0 {
		return st, fmt.Errorf("no introduction succeeded (first failure: %s)", st.firstFail)
	}
	return st, nil
}

// brokerCapacity registers o.brokerAgents sharers at the broker process, reads
// its RSS, then measures sustained introductions per second.
func (w *world) brokerCapacity(r *Report) error {
	u, err := secure.ParseBrokerURL(w.brokerURL)
	if err != nil {
		return err
	}
	rss0, err := rss(w.brokerProc.pid())
	if err != nil {
		return err
	}
	n := w.o.brokerAgents
	clients, regTime, err := registerMany(w.ctx, u, n)
	if err != nil {
		return err
	}
	defer closeClients(clients)
	time.Sleep(time.Second)
	rss1, err := rss(w.brokerProc.pid())
	if err != nil {
		return err
	}
	r.add(Figure{Part: "broker", Name: fmt.Sprintf("broker RSS, %d agents registered", n), Value: float64(rss1) / (1 << 20), Unit: "MiB",
		Baseline: float64(rss0) / (1 << 20), BaseName: "broker idle", Target: "< 500 MiB",
		Note: fmt.Sprintf("registered in %.1fs (%.0f/s, TLS handshake each, 32 at a time)", regTime.Seconds(), float64(n)/regTime.Seconds())})
	r.add(Figure{Part: "broker", Name: "agents registered", Value: float64(n), Unit: "agents", Target: ">= 10000"})

	// Introductions: guests (ticket holders, no token) connect to random
	// registered sharers; each guest keeps one Connect in flight.
	const guests = 32
	st, err := introLoad(w.ctx, u, clients, guests, time.Duration(w.o.introSecs)*time.Second)
	if err != nil {
		return err
	}
	r.add(Figure{Part: "broker", Name: "sustained introductions", Value: st.perSec(), Unit: "/s",
		Target: ">= 1000", Note: fmt.Sprintf("%d guests, one Connect in flight each, %d failed, among %d registered sharers", guests, st.failed, n)})
	return nil
}
