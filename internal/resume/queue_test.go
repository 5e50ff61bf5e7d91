package resume

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// The ring keeps exactly the bytes a flat slice would, across wraps and
// growth, whatever the order of pushes, drops and pops.
func TestQueueMatchesSlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	q := queue{limit: 5 * minQueue}
	var want []byte
	next := byte(0)
	for step := range 100000 {
		switch rng.IntN(4) {
		case 0, 1:
			p := make([]byte, rng.IntN(3*minQueue))
			for i := range p {
				p[i] = next
				next++
			}
			q.push(p)
			want = append(want, p...)
		case 2:
			n := rng.IntN(len(want) + 1)
			q.drop(n)
			want = want[n:]
		case 3:
			p := make([]byte, rng.IntN(2*minQueue))
			n := q.pop(p)
			if n != min(len(p), len(want)) || !bytes.Equal(p[:n], want[:n]) {
				t.Fatalf("step %d: pop %d bytes, want %d", step, n, min(len(p), len(want)))
			}
			want = want[n:]
		}
		if q.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, q.len(), len(want))
		}
		if len(want) > 0 {
			off := rng.IntN(len(want))
			got := q.at(off, len(want))
			if len(got) == 0 || !bytes.Equal(got, want[off:off+len(got)]) {
				t.Fatalf("step %d: at(%d) gives %d wrong bytes", step, off, len(got))
			}
		}
		if len(want) > 8*minQueue {
			q.drop(len(want))
			want = want[:0]
			q.trim()
		}
	}
}

// Space lent to a reader survives pops to empty, and a lend given up
// (a reader of a replaced carrier still holds it) is void at commit.
func TestQueueLend(t *testing.T) {
	var q queue
	q.push([]byte("ab"))
	sp, e := q.space(3)
	copy(sp, "cde")
	q.pop(make([]byte, 2))
	q.commit(e, 3)
	if got := make([]byte, 8); string(got[:q.pop(got)]) != "cde" {
		t.Fatalf("after a lend across a pop: %q", got)
	}

	sp, e = q.space(2)
	q.push([]byte("xy")) // a newer reader: the lent array is left to the old one
	copy(sp, "!!")
	q.commit(e, 2)
	if got := make([]byte, 8); string(got[:q.pop(got)]) != "xy" {
		t.Fatalf("after a void commit: %q", got)
	}
}
