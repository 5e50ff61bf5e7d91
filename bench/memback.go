package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// memBackPart measures whether memory grown under bulk load comes back
// (issue 20): a fresh sharer of the iperf3 server and its connector, idle;
// then iperf3 -P 8 through them; then their RSS while they sit idle again,
// for a minute. The baseline of each reading is the same agent's RSS when
// fresh, measured in the same run.
const memBackPart = "memback"

// memBackAt are the seconds after the bulk run at which RSS is read.
var memBackAt = []int{1, 5, 15, 30, 60}

// memBack runs twice: once with every connection closed after the bulk
// run (iperf3 -P 8), once with one idle connection left open through the
// same session meanwhile (an ssh beside a finished copy; the bulk is 8
// streams of the hol server, 4 up and 4 down): the session is as quiet,
// but the agent has a connection open.
func (w *world) memBack(r *Report) error {
	if err := w.memBackRun(r, "", w.iperfAddr, func(addr string) error {
		_, err := w.iperf(addr, 8)
		return err
	}); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	srv, err := w.start("memback-hol-server", nil, self, "-hol-child")
	if err != nil {
		return err
	}
	defer srv.stop()
	target, err := srv.firstLine(w.ctx)
	if err != nil {
		return err
	}
	var idle net.Conn
	defer func() {
		if idle != nil {
			idle.Close()
		}
	}()
	return w.memBackRun(r, ", one connection left open", target, func(addr string) error {
		if idle == nil {
			if idle, err = net.DialTimeout("tcp", addr, 10*time.Second); err != nil {
				return err
			}
			if _, err := idle.Write([]byte{holReqResp}); err != nil {
				return err
			}
		}
		return holBulk(addr, 8, time.Duration(w.o.seconds)*time.Second)
	})
}

// holBulk runs n bulk connections to the hol server at addr for d, half
// uploading, half downloading.
func holBulk(addr string, n int, d time.Duration) error {
	errc := make(chan error, n)
	end := time.Now().Add(d)
	for i := range n {
		go func() {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			mode := byte(holSink)
			if i%2 == 1 {
				mode = holSource
			}
			c.SetDeadline(end.Add(10 * time.Second))
			if _, err := c.Write([]byte{mode}); err != nil {
				errc <- err
				return
			}
			b := make([]byte, holBulkSize)
			for time.Now().Before(end) {
				if mode == holSink {
					_, err = c.Write(b)
				} else {
					_, err = c.Read(b)
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// memBackRun measures one fresh pair sharing target: bulk is the load, run
// once before the fresh reading (to make the session) and once measured.
func (w *world) memBackRun(r *Report, variant, target string, bulk func(addr string) error) error {
	name := "memback"
	if variant != "" {
		name = "memback-open"
	}
	share, con, addr, err := w.freshPair(name, target)
	if err != nil {
		return err
	}
	defer share.stop()
	defer con.stop()
	// A first run makes the peer session; fresh is the idle agent with its
	// session up, as in the memory part, after a small first load.
	if err := bulkOnce(w.ctx, addr, variant); err != nil {
		return fmt.Errorf("first connection: %w", err)
	}
	time.Sleep(15 * time.Second) // past the agent's own release after 10 s idle
	procs := []*proc{share, con}
	fresh := map[*proc]float64{}
	for _, p := range procs {
		v, err := rss(p.pid())
		if err != nil {
			return err
		}
		fresh[p] = float64(v) / (1 << 20)
	}
	peak := map[*proc]float64{}
	done := make(chan error, 1)
	go func() { done <- bulk(addr) }()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("bulk load: %w", err)
			}
			waiting = false
		case <-time.After(200 * time.Millisecond):
		}
		for _, p := range procs {
			if v, err := rss(p.pid()); err == nil {
				peak[p] = max(peak[p], float64(v)/(1<<20))
			}
		}
	}
	end := time.Now()
	readings := map[*proc][]string{}
	for _, at := range memBackAt {
		time.Sleep(time.Until(end.Add(time.Duration(at) * time.Second)))
		for _, p := range procs {
			v, err := rss(p.pid())
			if err != nil {
				return err
			}
			mib := float64(v) / (1 << 20)
			readings[p] = append(readings[p], fmt.Sprintf("%ds %.1f", at, mib))
			if at == 60 || at == 15 {
				target := ""
				if at == 60 {
					target = "<= 2x"
				}
				r.add(Figure{Part: memBackPart, Name: fmt.Sprintf("%s RSS %d s after 8 bulk streams%s", roleOf(p, share), at, variant), Value: mib, Unit: "MiB",
					Baseline: fresh[p], BaseName: "the same agent fresh, idle", Ratio: mib / fresh[p], Target: target})
			}
		}
	}
	for _, p := range procs {
		load := "iperf3 -P 8"
		if variant != "" {
			load = "8 bulk streams (4 up, 4 down) beside one idle connection that stays open"
		}
		r.add(Figure{Part: memBackPart, Name: roleOf(p, share) + " peak RSS during 8 bulk streams" + variant, Value: peak[p], Unit: "MiB",
			Baseline: fresh[p], BaseName: "the same agent fresh, idle", Ratio: peak[p] / fresh[p],
			Note: fmt.Sprintf("%d s of %s through one peer session; then idle: %s MiB", w.o.seconds, load, strings.Join(readings[p], ", "))})
	}
	return nil
}

// bulkOnce is a first small load: one echo through the hol server, or
// one short iperf3 run.
func bulkOnce(ctx context.Context, addr, variant string) error {
	if variant == "" {
		host, port, _ := net.SplitHostPort(addr)
		_, err := iperfRun(ctx, nil, host, port, 1, 1)
		return err
	}
	return holBulk(addr, 1, time.Second)
}

func roleOf(p, share *proc) string {
	if p == share {
		return "sharer"
	}
	return "connector"
}
