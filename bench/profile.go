package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// streamProfiles writes CPU profiles of iperf3 runs of each stream count
// alone: per count a fresh sharer of the world's iperf3 server and its
// connector, both profiled from start to exit (PEERPORT_CPUPROFILE, see
// profileEnv), two runs of -t seconds, then stopped. The files are
// <prefix>-<n>streams-sharer.pprof and -connector.pprof in -cpuprofile-dir;
// read them with `go tool pprof -top <file>`. A profile of
// the long-lived agents (iperf.pprof) mixes every stream count.
func (w *world) streamProfiles(prefix string, streams []int) error {
	if w.o.profileDir == "" {
		return nil
	}
	for _, n := range streams {
		name := fmt.Sprintf("%s-%dstreams", prefix, n)
		s, t, err := w.share(name+"-sharer", w.iperfAddr)
		if err != nil {
			return err
		}
		c, addr, err := w.connect(name+"-connector", t)
		if err != nil {
			s.stop()
			return err
		}
		var gb, cpu float64
		for range 2 {
			c0 := cpuSeconds(s.pid()) + cpuSeconds(c.pid())
			var g float64
			if g, err = w.iperf(addr, n); err != nil {
				break
			}
			gb += g * float64(w.o.seconds) / 8
			cpu += cpuSeconds(s.pid()) + cpuSeconds(c.pid()) - c0
		}
		c.stop() // SIGTERM: the agent writes its profile as it exits
		s.stop()
		if err != nil {
			return fmt.Errorf("profile run, %d streams: %w", n, err)
		}
		fmt.Fprintf(os.Stderr, "  profile %s: %.2f GB carried, both agents %.2f CPU s/GB during the runs\n", name, gb, cpu/max(gb, 1e-9))
	}
	dir, _ := filepath.Abs(w.o.profileDir)
	fmt.Fprintf(os.Stderr, "  profiles of %v streams alone: %s/%s-<n>streams-{sharer,connector}.pprof\n", streams, dir, prefix)
	return nil
}
