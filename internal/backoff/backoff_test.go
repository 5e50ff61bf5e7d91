package backoff

import (
	"context"
	"testing"
	"time"
)

func TestCeilingGrowsToCap(t *testing.T) {
	b := &Backoff{Base: 100 * time.Millisecond, Cap: time.Second, Rand: func() float64 { return 0.999999 }}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		if got := b.Ceiling(); got != w {
			t.Fatalf("attempt %d: ceiling %v, want %v", i, got, w)
		}
		if d := b.Next(); d > w || d < w*99/100 {
			t.Fatalf("attempt %d: delay %v outside (0, %v]", i, d, w)
		}
	}
}

func TestFullJitterSpansRange(t *testing.T) {
	b := &Backoff{Base: time.Second, Cap: time.Second}
	var lo, hi bool
	for range 1000 {
		d := b.Next()
		if d < 0 || d > time.Second {
			t.Fatalf("delay %v out of [0, 1s]", d)
		}
		lo = lo || d < 100*time.Millisecond
		hi = hi || d > 900*time.Millisecond
	}
	if !lo || !hi {
		t.Fatalf("1000 draws did not span the range (low %v high %v)", lo, hi)
	}
}

func TestResetOnlyAfterStablePeriod(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name   string
		lasted time.Duration
		want   int
	}{
		{"flapping keeps count", 5 * time.Second, 3},
		{"stable resets", 2 * time.Minute, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &Backoff{Stable: time.Minute}
			b.Next()
			b.Next()
			b.Next()
			b.Connected(t0)
			b.Lost(t0.Add(tc.lasted))
			if b.Attempts() != tc.want {
				t.Fatalf("attempts %d, want %d", b.Attempts(), tc.want)
			}
		})
	}
}

func TestSleepCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); err == nil {
		t.Fatal("Sleep returned nil on a cancelled context")
	}
}
