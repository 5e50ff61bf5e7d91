package agent

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/testutil"
	"github.com/peerport/peerport/mux"
)

// TestRecentBounded: the ring keeps the last maxRecent connections, newest
// first, whatever their number; ended ones keep their duration and how
// they ended, refused ones say why.
func TestRecentBounded(t *testing.T) {
	var r recentConns
	for i := range maxRecent + 7 {
		r.refused(roleSharer, "s"+strconv.Itoa(i), "peer", "", "target unreachable")
	}
	open := r.add(ConnEvent{Opened: time.Now().Add(-2 * time.Second), Role: roleConnector, Share: "web", Open: true})
	open.stats.bytesIn.Add(100)
	open.stats.bytesOut.Add(7)

	got := r.snapshot(time.Now())
	if len(got) != maxRecent {
		t.Fatalf("%d events, want the last %d", len(got), maxRecent)
	}
	if e := got[0]; e.Share != "web" || !e.Open || e.End != "" || e.BytesIn != 100 || e.BytesOut != 7 || e.DurationMS < 2000 {
		t.Errorf("newest %+v: want the open one, 100 B in, 7 B out, 2 s so far", e)
	}
	// The oldest kept is the 9th refused one: 57 added, 50 kept.
	if e := got[len(got)-1]; e.Share != "s8" || e.End != "refused: target unreachable" || e.Open || e.DurationMS != 0 {
		t.Errorf("oldest %+v: want s8, refused", e)
	}
	open.failed("peer -> local", io.ErrUnexpectedEOF)
	open.failed("local -> peer", nil) // the second reason is not the one
	open.end()
	later := r.snapshot(time.Now().Add(time.Hour))
	if e := later[0]; e.Open || e.End != "reset (peer -> local: unexpected EOF)" || e.DurationMS > 60_000 {
		t.Errorf("after end: %+v; want a reset, its duration frozen at its end", e)
	}
	var none *connRecord
	none.failed("x", nil) // a pipe without a record (tests) notes nothing
	none.end()
}

// TestRecentPipe: a real pipe fills its record: the bytes that passed, and
// "closed" for an end by FIN both ways, a reset for a cut one.
func TestRecentPipe(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(app net.Conn, peer *mux.Stream)
		want string
	}{
		{"fin", func(app net.Conn, peer *mux.Stream) {
			app.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, peer)
			peer.CloseWrite()
			io.Copy(io.Discard, app)
		}, "closed"},
		{"reset", func(app net.Conn, peer *mux.Stream) {
			peer.Reset()
			io.Copy(io.Discard, app)
		}, "reset ("},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := logrus.New()
			log.SetOutput(io.Discard)
			a := &Agent{log: log}
			a.parker.spawn = a.spawn
			c1, c2 := testutil.TCPPair(t)
			cl, err := mux.Client(c1, log)
			if err != nil {
				t.Fatal(err)
			}
			sv, err := mux.Server(c2, log)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cl.Close()
				sv.Close()
				a.parker.close()
				a.wg.Wait()
				a.release.stop()
			})
			st, err := cl.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			st.Write([]byte{0})
			peer, err := sv.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			peer.Read(make([]byte, 1))
			app, local := testutil.TCPPair(t)
			defer app.Close()
			rec := a.recent.add(ConnEvent{Opened: time.Now(), Role: roleConnector, Share: "web", Open: true})
			a.pipe(st, local, rec)

			io.WriteString(app, "hello")
			io.ReadFull(peer, make([]byte, 5))
			io.WriteString(peer, "hi")
			io.ReadFull(app, make([]byte, 2))
			tc.end(app, peer)
			var e ConnEvent
			eventually(t, "the record ended", func() bool {
				e = a.recent.snapshot(time.Now())[0]
				return !e.Open
			})
			if !strings.HasPrefix(e.End, tc.want) || e.BytesOut != 5 || e.BytesIn != 2 {
				t.Errorf("%+v: want end %q..., 5 B out, 2 B in", e, tc.want)
			}
		})
	}
}
