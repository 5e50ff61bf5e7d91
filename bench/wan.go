package main

// The wan part: throughput and 1-byte round trips through the tunnel
// against raw TCP on the same path, over the NAT lab's WAN link at 0, 20
// and 50 ms RTT. The sharer is a
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
	// wanIperfPort is the iperf3 server on the sharer's host, all
	// addresses, wanEchoPort an echo server there; the connectors listen
	// on wanTunnelPort and wanEchoTunnelPort on their host.
	wanIperfPort, wanEchoPort, wanTunnelPort, wanEchoTunnelPort = 5201, 7007, 15203, 15204
	// wanBlock is the round trips per block, alternating paths.
	wanBlock = 50
)

func wanBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, wanBudget)
	defer cancel()
	for _, rtt := range []int{0, 20, 50} {
		if err := wanRun(ctx, bin, tmp, o, rtt, r); err != nil {
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

// wanRun builds the lab for one RTT and measures both.
func wanRun(ctx context.Context, bin binaries, tmp string, o options, rtt int, r *Report) error {
	topo, err := wanTopology(rtt)
	if err != nil {
		return err
	}
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	if err := wanThroughput(ctx, l, o, rtt, r); err != nil {
		return err
	}
	return wanLatency(ctx, l, rtt, r)
}

// connector starts an `agent connect` of ticket on host b, direct path,
// listening on port there.
func (l *punchLab) connector(name, ticket string, port int) (*natlab.Proc, error) {
	p, err := l.lab.Host("b").StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", l.dir(name),
		"connect", ticket, "--path", pathDirect, "--listen", "127.0.0.1:" + strconv.Itoa(port)}})
	if err != nil {
		return nil, err
	}
	if _, err := l.line(p, 30*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func wanLink(rtt int) string {
	return fmt.Sprintf("sharer public, connector behind a cone NAT, punched direct path; links of %v one-way delay on both uplinks "+
		"(userspace, they cap the rate)", time.Duration(rtt)*time.Millisecond/4)
}

func wanThroughput(ctx context.Context, l *punchLab, o options, rtt int, r *Report) error {
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
	con, err := l.connector("iperf-connector", ticket, wanTunnelPort)
	if err != nil {
		return err
	}
	defer con.Stop()
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
		Note: fmt.Sprintf("%s; raw = iperf3 from the connector's host to the sharer's public address; "+
			"median of %d interleaved rounds; tunnel %v raw %v", wanLink(rtt), o.rounds, round2(rates[tunnel]), round2(rates[raw]))})
	return nil
}

// wanLatency: 1-byte round trips through the tunnel and to an echo server
// on the sharer's public address, in alternating blocks.
func wanLatency(ctx context.Context, l *punchLab, rtt int, r *Report) error {
	a, b := l.lab.Host("a"), l.lab.Host("b")
	ln, err := a.Listen("tcp", net.JoinHostPort(a.IP().String(), strconv.Itoa(wanEchoPort)))
	if err != nil {
		return err
	}
	defer ln.Close()
	go echoServer(ln)
	con, err := l.connector("echo-connector", l.ticket, wanEchoTunnelPort)
	if err != nil {
		return err
	}
	defer con.Stop()
	pings := 400
	if rtt >= 50 {
		pings = 100 // 5 s a path at 50 ms
	}
	paths := []string{pathRaw, pathTunnel}
	addrs := map[string]string{pathRaw: ln.Addr().String(), pathTunnel: net.JoinHostPort("127.0.0.1", strconv.Itoa(wanEchoTunnelPort))}
	conns := map[string]net.Conn{}
	for _, p := range paths {
		c, err := b.Dial(ctx, "tcp", addrs[p])
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer c.Close()
		if _, err := pingPong(c, 5); err != nil { // warm up: stream open, windows
			return fmt.Errorf("%s: %w", p, err)
		}
		conns[p] = c
	}
	rtts := map[string][]time.Duration{}
	for done := 0; done < pings; done += wanBlock {
		for _, p := range paths {
			d, err := pingPong(conns[p], min(wanBlock, pings-done))
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			rtts[p] = append(rtts[p], d...)
		}
	}
	note := fmt.Sprintf("%s; 1-byte ping-pong, %d round trips a path in interleaved blocks of %d; raw = to an echo server on the sharer's public address",
		wanLink(rtt), pings, wanBlock)
	for _, q := range []float64{.5, .99} {
		r.add(Figure{Part: wanPart, Name: fmt.Sprintf("round trip p%.0f, WAN %d ms RTT", q*100, rtt), Value: pct(rtts[pathTunnel], q) / 1000, Unit: "ms",
			Baseline: pct(rtts[pathRaw], q) / 1000, BaseName: "raw TCP, same path", Note: note})
	}
	return nil
}
