package natlab_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestWANLink checks the userspace link's delay, loss and rate cap, each on
// its own NAT's uplink, against a host behind a NAT without a link.
func TestWANLink(t *testing.T) {
	const (
		delay = 40 * time.Millisecond
		loss  = 0.2
		rate  = 8_000_000
	)
	topo := natlab.Topology{
		Name: "wan",
		Routers: []natlab.RouterSpec{
			{Name: "gw-n", Kind: natlab.Cone},
			{Name: "gw-d", Kind: natlab.Cone, Link: &natlab.LinkConfig{Delay: delay, Jitter: 5 * time.Millisecond}},
			{Name: "gw-l", Kind: natlab.Cone, Link: &natlab.LinkConfig{Loss: loss}},
			{Name: "gw-r", Kind: natlab.Cone, Link: &natlab.LinkConfig{Rate: rate}},
		},
		Hosts: []natlab.HostSpec{
			{Name: "broker"},
			{Name: "n", Behind: "gw-n"}, {Name: "d", Behind: "gw-d"},
			{Name: "l", Behind: "gw-l"}, {Name: "r", Behind: "gw-r"},
		},
	}
	lab := natlab.New(t, topo)
	ctx := testCtx(t, 60*time.Second)
	broker := lab.Host("broker")
	startProbe(t, ctx, broker, "listening", "serve", "-listen", ":7001")
	refl := net.JoinHostPort(broker.IP().String(), "7001")

	t.Run("delay", func(t *testing.T) {
		t.Parallel()
		median := func(host string) time.Duration {
			out, err := lab.Host(host).RunCommand(ctx, probe(t, "rtt", "-to", refl, "-n", "20"))
			if err != nil {
				t.Fatal(err)
			}
			us, _ := strconv.Atoi(field(string(out), "median"))
			t.Logf("%s: %s", host, strings.TrimSpace(string(out)))
			return time.Duration(us) * time.Microsecond
		}
		base, slow := median("n"), median("d")
		rise := slow - base
		// One-way delay each way: the RTT rises by 2*delay (80ms); generous tolerance.
		if rise < 2*delay*3/4 || rise > 2*delay*7/4 {
			t.Errorf("RTT rose by %v (%v -> %v), want about %v", rise, base, slow, 2*delay)
		}
	})

	t.Run("loss", func(t *testing.T) {
		t.Parallel()
		const n = 1000
		sink, _ := startProbe(t, ctx, broker, "listening", "udpsink", "-listen", ":7002", "-idle", "1s")
		if _, err := lab.Host("l").RunCommand(ctx, probe(t, "udpsend", "-to", net.JoinHostPort(broker.IP().String(), "7002"), "-n", strconv.Itoa(n))); err != nil {
			t.Fatal(err)
		}
		line, err := sink.Expect(ctx, "received")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := strconv.Atoi(strings.Fields(line)[1])
		share := 1 - float64(got)/n
		up, _ := lab.Link("gw-l").Stats()
		t.Logf("received %d of %d: %.1f%% lost (link: %+v)", got, n, 100*share, up)
		if share < loss-0.1 || share > loss+0.1 {
			t.Errorf("lost %.1f%%, want about %.0f%%", 100*share, 100*loss)
		}
	})

	t.Run("rate", func(t *testing.T) {
		t.Parallel()
		out, err := lab.Host("r").RunCommand(ctx, probe(t, "bulk", "-to", refl, "-bytes", strconv.Itoa(1500_000)))
		if err != nil {
			t.Fatal(err)
		}
		bps, _ := strconv.Atoi(field(string(out), "bps"))
		t.Logf("%s (cap %d bit/s)", strings.TrimSpace(string(out)), rate)
		if bps > rate*105/100 || bps < rate/4 {
			t.Errorf("bulk transfer at %d bit/s, want at most the cap %d (and not far below)", bps, rate)
		}
	})
}
