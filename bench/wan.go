package main

// The wan part: throughput through the tunnel against raw TCP on the same
// path, over the NAT lab's WAN link at 0, 20 and 50 ms RTT. The sharer is a
// public host so that raw TCP can reach it too: the connector, behind a
// cone NAT, punches to it over the very links raw iperf3 crosses, and both
// talk to one iperf3 server on the sharer's host.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	wanPart = "wan"
	// wanBudget bounds the whole part, lab builds included.
	wanBudget = 6 * time.Minute
	// wanIperfPort is the iperf3 server on the sharer's host, all addresses;
	// wanTunnelPort the connector's listener on its host.
	wanIperfPort, wanTunnelPort = 5201, 15203
)

func wanBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, wanBudget)
	defer cancel()
	for _, rtt := range []int{0, 20, 50} {
		if err := wanThroughput(ctx, bin, tmp, o, rtt, r); err != nil {
			return fmt.Errorf("%d ms: %w", rtt, err)
		}
	}
	return nil
}

// wanTopology is public-cone with a link of rtt/4 one-way delay on the
// sharer's uplink and on the connector's NAT's: a-b RTT is rtt. The links
// are there at 0 ms too, so every RTT crosses the same userspace links.
func wanTopology(rtt int) (natlab.Topology, error) {
	topo := natlab.Pair(natlab.Public, natlab.BehindCone)
	topo.Name = fmt.Sprintf("wan-public-cone-%dms", rtt)
	link := natlab.LinkConfig{Delay: time.Duration(rtt) * time.Millisecond / 4}
	topo, err := topo.WithLink("a", link)
	if err != nil {
		return topo, err
	}
	return topo.WithLink("gw-b", link)
}

func wanThroughput(ctx context.Context, bin binaries, tmp string, o options, rtt int, r *Report) error {
	topo, err := wanTopology(rtt)
	if err != nil {
		return err
	}
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	a, b := l.lab.Host("a"), l.lab.Host("b")
	srv, err := a.StartCommand(ctx, natlab.Command{Path: "iperf3", Args: []string{"-s", "-p", strconv.Itoa(wanIperfPort)}})
	if err != nil {
		return err
	}
	defer srv.Stop()
	ticket, err := l.share("iperf", net.JoinHostPort("127.0.0.1", strconv.Itoa(wanIperfPort)))
	if err != nil {
		return err
	}
	con, err := b.StartCommand(ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", l.dir("iperf-connector"),
		"connect", ticket, "--path", pathDirect, "--listen", "127.0.0.1:" + strconv.Itoa(wanTunnelPort)}})
	if err != nil {
		return err
	}
	defer con.Stop()
	if _, err := l.line(con, 30*time.Second); err != nil {
		return err
	}
	const raw, tunnel = "raw", "tunnel"
	addr := map[string][2]string{
		raw:    {a.IP().String(), strconv.Itoa(wanIperfPort)},
		tunnel: {"127.0.0.1", strconv.Itoa(wanTunnelPort)},
	}
	prefix := []string{"ip", "netns", "exec", b.Namespace()}
	rates := map[string][]float64{}
	for i := range o.rounds {
		for _, k := range alternate(i, raw, tunnel) {
			g, err := iperfRun(ctx, prefix, addr[k][0], addr[k][1], o.seconds, 1)
			if err != nil {
				return fmt.Errorf("iperf3 %s: %w", k, err)
			}
			rates[k] = append(rates[k], g)
		}
	}
	target := ""
	if rtt == 50 {
		target = ">= 0.9x"
	}
	r.add(Figure{Part: wanPart, Name: fmt.Sprintf("iperf3 1 stream, WAN %d ms RTT", rtt), Value: median(rates[tunnel]), Unit: "Gbit/s",
		Baseline: median(rates[raw]), BaseName: "raw TCP, same path", Target: target,
		Note: fmt.Sprintf("sharer public, connector behind a cone NAT, punched direct path; links of %v one-way delay on both uplinks "+
			"(userspace, they cap the rate); raw = iperf3 from the connector's host to the sharer's public address; "+
			"median of %d interleaved rounds; tunnel %v raw %v", time.Duration(rtt)*time.Millisecond/4, o.rounds,
			round2(rates[tunnel]), round2(rates[raw]))})
	return nil
}
