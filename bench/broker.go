package main

import (
	"context"
	"crypto/tls"
	"errors"
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
}

func dialCtl(ctx context.Context, u secure.BrokerURL, token string) (*ctlClient, error) {
	id, err := secure.NewIdentity()
	if err != nil {
		return nil, err
	}
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

// register announces share "s" and then answers every introduction with a
// dummy candidate until the connection closes.
func (c *ctlClient) register(u secure.BrokerURL) error {
	t, err := secure.NewTicket(u.Addr, u.Pin, c.id.ID(), "s")
	if err != nil {
		return err
	}
	c.admit = t.AdmitKey()
	h := t.AdmitHash()
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
	go func() {
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
	clients := make([]*ctlClient, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	}()
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
				if i >= n || w.ctx.Err() != nil {
					return
				}
				c, err := dialCtl(w.ctx, u, u.Token)
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
	if firstErr != nil {
		return firstErr
	}
	regTime := time.Since(t0)
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
	var ok, failed atomic.Int64
	dl := time.Now().Add(time.Duration(w.o.introSecs) * time.Second)
	errc := make(chan error, guests)
	t0 = time.Now()
	for g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialCtl(w.ctx, u, "")
			if err != nil {
				errc <- err
				return
			}
			defer c.conn.Close()
			c.conn.SetDeadline(dl.Add(30 * time.Second))
			for i := 0; time.Now().Before(dl); i++ {
				s := clients[(g*7919+i*104729)%n]
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
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("introductions: %w", err)
	}
	if ok.Load() == 0 {
		return errors.New("no introduction succeeded")
	}
	r.add(Figure{Part: "broker", Name: "sustained introductions", Value: float64(ok.Load()) / el.Seconds(), Unit: "/s",
		Target: ">= 1000", Note: fmt.Sprintf("%d guests, one Connect in flight each, %d failed, among %d registered sharers", guests, failed.Load(), n)})
	return nil
}
