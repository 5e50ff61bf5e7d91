package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
	"github.com/peerport/peerport/mux"
)

// muxResult is what a -mux-streams-child process reports.
type muxResult struct {
	Streams     int     `json:"streams"`
	RSSBefore   int64   `json:"rss_before"`
	RSSAfter    int64   `json:"rss_after"`
	DeathMillis float64 `json:"death_ms"`       // session closed -> every blocked read returned
	CPUAfter    float64 `json:"cpu_after_frac"` // CPU used in the second after, as a fraction of one core
}

// muxMemory runs bare mux sessions (both sides in a fresh child process) with
// many idle streams: per-stream memory of the mux alone, beyond the agents'
// per-stream cap, and how the session dies with all of them blocked; then
// the mux package's throughput and latency benchmarks (sessionBench).
func (w *world) muxMemory(r *Report) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, n := range w.o.muxStreams {
		out, err := runOut(w.ctx, 3*time.Minute, nil, self, "-mux-streams-child", strconv.Itoa(n))
		if err != nil {
			return err
		}
		var m muxResult
		if err := json.Unmarshal(out, &m); err != nil {
			return fmt.Errorf("child output %q: %w", out, err)
		}
		r.add(Figure{Part: "mux", Name: fmt.Sprintf("RSS per idle stream per side, bare mux, %d streams", n),
			Value: float64(m.RSSAfter-m.RSSBefore) / float64(2*n) / 1024, Unit: "KiB", Target: "< 8 KiB",
			Note: "TLS session over loopback, both ends in one process, a reader blocked on every stream"})
		r.add(Figure{Part: "mux", Name: fmt.Sprintf("session death, %d blocked reads: all returned", n),
			Value: m.DeathMillis, Unit: "ms", Target: "< 1000 ms"})
		r.add(Figure{Part: "mux", Name: fmt.Sprintf("session death, %d streams: CPU in the next second", n),
			Value: m.CPUAfter * 100, Unit: "% of a core", Target: "idle"})
	}
	return w.sessionBench(r)
}

func muxStreamsChild(arg string) {
	n, err := strconv.Atoi(arg)
	if err == nil {
		err = muxChild(n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mux child:", err)
		os.Exit(1)
	}
}

func muxChild(n int) error {
	cc, sc, err := tlsPair()
	if err != nil {
		return err
	}
	cs, err := mux.Client(cc, nil)
	if err != nil {
		return err
	}
	ss, err := mux.Server(sc, nil)
	if err != nil {
		return err
	}
	// A session's death must end its readers by itself.
	var readers sync.WaitGroup
	block := func(c io.ReadWriter) {
		defer readers.Done()
		b := []byte{0}
		io.ReadFull(c, b) // returns when the session dies
	}
	go func() {
		for {
			st, err := ss.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				b := []byte{0}
				if _, err := io.ReadFull(st, b); err == nil {
					st.Write(b)
				}
				block(st)
			}()
		}
	}()
	runtime.GC()
	time.Sleep(200 * time.Millisecond)
	var res muxResult
	res.Streams = n
	if res.RSSBefore, err = rss(os.Getpid()); err != nil {
		return err
	}
	readers.Add(2 * n)
	for i := range n {
		st, err := cs.OpenStream()
		if err != nil {
			return fmt.Errorf("open stream %d: %w", i, err)
		}
		b := []byte{1}
		if _, err := st.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(st, b); err != nil {
			return err
		}
		go block(st)
	}
	time.Sleep(time.Second)
	if res.RSSAfter, err = rss(os.Getpid()); err != nil {
		return err
	}
	// Kill the transport under both sessions, as a dead path does.
	t0 := time.Now()
	cc.Close()
	sc.Close()
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
		res.DeathMillis = float64(time.Since(t0).Microseconds()) / 1000
	case <-time.After(60 * time.Second):
		res.DeathMillis = -1
	}
	c0 := testutil.CPUTime()
	time.Sleep(time.Second)
	res.CPUAfter = (testutil.CPUTime() - c0).Seconds()
	cs.Close()
	ss.Close()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// tlsPair is the peer channel over loopback TCP, as the agents set it up.
func tlsPair() (*tls.Conn, *tls.Conn, error) {
	sharer, err := secure.NewIdentity()
	if err != nil {
		return nil, nil, err
	}
	connector, err := secure.NewIdentity()
	if err != nil {
		return nil, nil, err
	}
	scfg, err := secure.PeerServerConfig(sharer)
	if err != nil {
		return nil, nil, err
	}
	ccfg, err := secure.PeerClientConfig(connector, sharer.ID())
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	c2 := <-ch
	if c2 == nil {
		c1.Close()
		return nil, nil, fmt.Errorf("accept failed")
	}
	cc, sc := tls.Client(c1, ccfg), tls.Server(c2, scfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(ctx) }()
	cerr := cc.HandshakeContext(ctx)
	if serr := <-errc; cerr != nil || serr != nil {
		c1.Close()
		c2.Close()
		return nil, nil, fmt.Errorf("handshake: client %v, server %v", cerr, serr)
	}
	return cc, sc, nil
}
