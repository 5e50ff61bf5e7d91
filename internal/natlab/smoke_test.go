package natlab_test

import (
	"context"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

func TestSmoke(t *testing.T) {
	lab := natlab.New(t, natlab.Pair(natlab.BehindCone, natlab.BehindCone))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := lab.Host("a").Run(ctx, "cat", "/proc/sys/net/ipv4/ip_forward")
	t.Logf("%s %v", out, err)
	out, err = lab.Host("a").Run(ctx, "ip", "addr")
	t.Logf("%s %v", out, err)
}
