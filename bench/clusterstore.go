package main

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterStore measures the two designs issue 17 names for the presence of
// agents and shares in a broker cluster, on a real nats-server (natsBin) on
// loopback, for n agents:
//
//   - A, subjects (what broker/cluster.go does): a node subscribes to one
//     subject per agent it holds; a lookup is a request on that subject,
//     answered by the holding node; nobody holding it is "no responders" at
//     once; a node's death takes its subscriptions with its connection.
//   - B, JetStream KV with a TTL: a node puts one entry per agent (naming
//     itself) and refreshes it before the TTL; a lookup is a Get, then still
//     a request to the node the entry names; a dead node's entries stay
//     until the TTL.
//
// Each design gets a fresh server of the same flags (JetStream on for both),
// so memory and traffic are each design's own. Every figure is B's, beside
// A's same figure from the same run as its baseline.
func clusterStore(ctx context.Context, natsBin string, n int, r *Report) error {
	if n < 30 {
		return fmt.Errorf("clusterstore: n = %d: need at least 30 keys", n)
	}
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	fmt.Fprintf(os.Stderr, "cluster presence: subjects vs JetStream KV, %d agents\n", n)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = csID()
	}
	samples := min(n, 2000)
	a, err := csMeasure(ctx, natsBin, ids, samples, csSubjects)
	if err != nil {
		return fmt.Errorf("clusterstore: subjects: %w", err)
	}
	b, err := csMeasure(ctx, natsBin, ids, samples, csKV)
	if err != nil {
		return fmt.Errorf("clusterstore: kv: %w", err)
	}
	csFigures(r, n, samples, a, b)
	return nil
}

const (
	csNodes       = 3                // broker nodes, one NATS connection each
	csPutters     = 4                // concurrent putters per node (B)
	csTTL         = 30 * time.Second // the KV bucket's TTL (B)
	csRefresh     = csTTL / 3        // a node refreshes its entries this often
	csBucket      = "peerport_presence"
	csPayloadSize = 64 // request and reply bodies, both designs
)

// csResult is one design's measurements. Latencies in microseconds.
type csResult struct {
	regP50, regP99     float64 // one registration, until the server has it
	regRate            float64 // registrations/s, all nodes at once
	lookP50, lookP99   float64 // a lookup that reaches the holding node
	getP50, getP99     float64 // B: the Get alone
	absentP50          float64 // a lookup of an agent nobody holds
	unregP50           float64
	goneMs             float64 // a node's death: until its agent is not found
	goneAllMs          float64 // A: until the server dropped all its subscriptions
	rssBefore, rssN    int64   // server RSS, fresh and with n agents
	rssAfter           int64   // B: server RSS after one refresh period
	storeBytes         int64   // B: stream bytes for n entries
	rawBytes           int64   // B: key + value bytes of the n entries
	dirBytes           int64   // B: file store directory, after registering
	dirAfter           int64   // B: file store directory, after one refresh period
	keepMsgs, keepByte float64 // NATS messages and bytes per second (in + out) to keep n present
	keepCPU            float64 // server CPU, percent of one core, over that window
	refreshRate        float64 // B: refreshes/s achieved over the window
	window             time.Duration
}

// csRun is one design's run: its own fresh server, with the csNodes nodes
// and the asker (another node, which looks agents up) connected to it.
type csRun struct {
	srv     *natsServer
	nodes   []*nats.Conn
	req     *nats.Conn // the asker
	ids     []string
	samples int
	payload []byte // request and reply bodies
	res     *csResult
}

// csMeasure measures one design on a fresh server of its own (JetStream
// on, for both designs), its RSS read before anything connects.
func csMeasure(ctx context.Context, natsBin string, ids []string, samples int,
	design func(context.Context, *csRun) error) (*csResult, error) {
	srv, err := startNATS(ctx, startProc, natsBin, true)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	r := &csRun{srv: srv, nodes: make([]*nats.Conn, csNodes), ids: ids, samples: samples,
		payload: make([]byte, csPayloadSize), res: &csResult{window: csRefresh}}
	r.res.rssBefore, _ = srv.rss()
	for i := range r.nodes {
		if r.nodes[i], err = csConnect(srv.url, fmt.Sprintf("node-%d", i)); err != nil {
			return nil, err
		}
		defer r.nodes[i].Close()
	}
	if r.req, err = csConnect(srv.url, "asker"); err != nil {
		return nil, err
	}
	defer r.req.Close()
	if err := design(ctx, r); err != nil {
		return nil, err
	}
	return r.res, nil
}

// csSubjects measures design A.
func csSubjects(ctx context.Context, r *csRun) error {
	srv, nodes, req, ids, samples, payload, res := r.srv, r.nodes, r.req, r.ids, r.samples, r.payload, r.res
	msgs := make([]chan *nats.Msg, csNodes)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx) // ends the responders, before wg.Wait
	defer cancel()
	for i := range nodes {
		// Like cluster.hold: one channel per node for all its subscriptions.
		msgs[i] = make(chan *nats.Msg, 8192)
		ch := msgs[i]
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-ctx.Done():
						return
					case m := <-ch:
						m.Respond(payload)
					}
				}
			})
		}
	}
	subject := func(id string) string { return "peerport.v1.agent." + id }

	// Register every agent, split over the nodes, all at once; done when
	// every node's subscriptions are flushed (the server has them).
	subs := make([][]*nats.Subscription, csNodes)
	errs := make([]error, csNodes)
	start := time.Now()
	var rg sync.WaitGroup
	for i, nc := range nodes {
		rg.Go(func() {
			for j := i; j < len(ids); j += csNodes {
				s, err := nc.ChanSubscribe(subject(ids[j]), msgs[i])
				if err != nil {
					errs[i] = err
					return
				}
				subs[i] = append(subs[i], s)
			}
			errs[i] = nc.Flush()
		})
	}
	rg.Wait()
	res.regRate = float64(len(ids)) / time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	v, err := srv.varz(ctx)
	if err != nil {
		return err
	}
	if v.Subscriptions < int64(len(ids)) {
		return fmt.Errorf("server holds %d subscriptions, want at least %d", v.Subscriptions, len(ids))
	}
	time.Sleep(500 * time.Millisecond)
	res.rssN, _ = srv.rss()

	// Keeping n agents present: nothing to do. Measured over the same
	// window as B's refresh period.
	if err := csKeep(ctx, srv, res, func(context.Context) {}); err != nil {
		return err
	}

	// Lookups from another node.
	look := make([]time.Duration, 0, samples)
	for k := range samples {
		t := time.Now()
		if _, err := req.Request(subject(ids[(k*7919)%len(ids)]), payload, 5*time.Second); err != nil {
			return fmt.Errorf("lookup: %w", err)
		}
		look = append(look, time.Since(t))
	}
	res.lookP50, res.lookP99 = csQ(look, 0.5), csQ(look, 0.99)
	absent := make([]time.Duration, 0, samples)
	for range samples {
		t := time.Now()
		_, err := req.Request(subject(csID()), payload, 5*time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("absent lookup: got %v, want no responders", err)
		}
		absent = append(absent, time.Since(t))
	}
	res.absentP50 = csQ(absent, 0.5)

	// One registration and one unregistration at a time, each until the
	// server has it (a flush is one round trip to the server).
	reg := make([]time.Duration, 0, samples)
	unreg := make([]time.Duration, 0, samples)
	extra := make([]*nats.Subscription, 0, samples)
	for range samples {
		t := time.Now()
		s, err := nodes[0].ChanSubscribe(subject(csID()), msgs[0])
		if err == nil {
			err = nodes[0].Flush()
		}
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		reg = append(reg, time.Since(t))
		extra = append(extra, s)
	}
	for _, s := range extra {
		t := time.Now()
		err := s.Unsubscribe()
		if err == nil {
			err = nodes[0].Flush()
		}
		if err != nil {
			return fmt.Errorf("unregister: %w", err)
		}
		unreg = append(unreg, time.Since(t))
	}
	res.regP50, res.regP99 = csQ(reg, 0.5), csQ(reg, 0.99)
	res.unregP50 = csQ(unreg, 0.5)

	// A node's departure: its connection closes (as when its process is
	// killed: the kernel closes the socket). Until a request for one of its
	// agents gets no responders, and until the server dropped them all.
	v, err = srv.varz(ctx)
	if err != nil {
		return err
	}
	before, last := v.Subscriptions, len(ids)-1
	for last%csNodes != csNodes-1 {
		last--
	}
	dead := subject(ids[last])
	if _, err := req.Request(dead, payload, 5*time.Second); err != nil {
		return fmt.Errorf("before departure: %w", err)
	}
	t0 := time.Now()
	nodes[csNodes-1].Close()
	for {
		_, err := req.Request(dead, payload, 20*time.Millisecond)
		if errors.Is(err, nats.ErrNoResponders) {
			break
		}
		if time.Since(t0) > 30*time.Second || ctx.Err() != nil {
			return errors.New("a departed node's agent is still answered after 30 s")
		}
	}
	res.goneMs = float64(time.Since(t0).Microseconds()) / 1e3
	want := before - int64(len(subs[csNodes-1]))
	for {
		v, err := srv.varz(ctx)
		if err != nil {
			return err
		}
		if v.Subscriptions <= want {
			break
		}
		if time.Since(t0) > 30*time.Second {
			return fmt.Errorf("server still holds %d subscriptions 30 s after a departure, want %d", v.Subscriptions, want)
		}
		time.Sleep(time.Millisecond)
	}
	res.goneAllMs = float64(time.Since(t0).Microseconds()) / 1e3
	return nil
}

// csKV measures design B.
func csKV(ctx context.Context, r *csRun) error {
	srv, nodes, req, ids, samples, payload, res := r.srv, r.nodes, r.req, r.ids, r.samples, r.payload, r.res
	kvs := make([]jetstream.KeyValue, csNodes)
	for i := range nodes {
		// The node itself still answers introductions, on one subject.
		if _, err := nodes[i].Subscribe(csNodeSubject(i), func(m *nats.Msg) { m.Respond(payload) }); err != nil {
			return err
		}
		if err := nodes[i].Flush(); err != nil {
			return err
		}
		js, err := jetstream.New(nodes[i])
		if err != nil {
			return err
		}
		if i == 0 {
			kvs[i], err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: csBucket, TTL: csTTL, History: 1, Storage: jetstream.FileStorage, Replicas: 1,
			})
		} else {
			kvs[i], err = js.KeyValue(ctx, csBucket)
		}
		if err != nil {
			return err
		}
	}
	jsReq, err := jetstream.New(req)
	if err != nil {
		return err
	}
	kvReq, err := jsReq.KeyValue(ctx, csBucket)
	if err != nil {
		return err
	}
	key := func(id string) string { return "agent." + id }
	value := func(node int) []byte {
		b, _ := json.Marshal(map[string]string{"node": fmt.Sprintf("node-%d", node), "instance": "0123456789abcdef"})
		return b
	}
	nodeOf := func(j int) int { return j % csNodes }

	// Register every agent: csPutters concurrent Puts per node, each
	// until its acknowledgement (stored).
	putAll := func(ctx context.Context, skip func(j int) bool, pace time.Duration) (int, error) {
		var done atomic.Int64
		errs := make([]error, csNodes*csPutters)
		start := time.Now()
		var wg sync.WaitGroup
		for p := range csNodes * csPutters {
			node := p % csNodes
			wg.Go(func() {
				for j := p; j < len(ids); j += csNodes * csPutters {
					if skip != nil && skip(j) {
						continue
					}
					if pace > 0 { // spread over the period, as a refresher would
						at := start.Add(pace * time.Duration(j) / time.Duration(len(ids)))
						if d := time.Until(at); d > 0 {
							select {
							case <-time.After(d):
							case <-ctx.Done():
								return
							}
						}
					}
					if _, err := kvs[node].Put(ctx, key(ids[j]), value(nodeOf(j))); err != nil {
						errs[p] = err
						return
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		return int(done.Load()), errors.Join(errs...)
	}
	start := time.Now()
	if _, err := putAll(ctx, nil, 0); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	res.regRate = float64(len(ids)) / time.Since(start).Seconds()
	time.Sleep(500 * time.Millisecond)
	res.rssN, _ = srv.rss()
	st, err := kvs[0].Status(ctx)
	if err != nil {
		return err
	}
	if st.Values() < uint64(len(ids)) {
		return fmt.Errorf("bucket holds %d values, want %d", st.Values(), len(ids))
	}
	res.storeBytes = int64(st.Bytes())
	for j := range ids {
		res.rawBytes += int64(len(key(ids[j])) + len(value(nodeOf(j))))
	}
	res.dirBytes = csDirBytes(srv.dir)

	// Lookups from another node: the Get alone, then the Get and the
	// request to the node it names, which an introduction still needs.
	get := make([]time.Duration, 0, samples)
	look := make([]time.Duration, 0, samples)
	for k := range samples {
		id := ids[(k*7919)%len(ids)]
		t := time.Now()
		e, err := kvReq.Get(ctx, key(id))
		if err != nil {
			return fmt.Errorf("lookup: %w", err)
		}
		get = append(get, time.Since(t))
		var holder struct{ Node string }
		if err := json.Unmarshal(e.Value(), &holder); err != nil {
			return err
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(holder.Node, "node-"))
		if _, err := req.Request(csNodeSubject(i), payload, 5*time.Second); err != nil {
			return fmt.Errorf("lookup request: %w", err)
		}
		look = append(look, time.Since(t))
	}
	res.getP50, res.getP99 = csQ(get, 0.5), csQ(get, 0.99)
	res.lookP50, res.lookP99 = csQ(look, 0.5), csQ(look, 0.99)
	absent := make([]time.Duration, 0, samples)
	for range samples {
		t := time.Now()
		_, err := kvReq.Get(ctx, key(csID()))
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("absent lookup: got %v, want key not found", err)
		}
		absent = append(absent, time.Since(t))
	}
	res.absentP50 = csQ(absent, 0.5)

	// One registration and one unregistration at a time.
	reg := make([]time.Duration, 0, samples)
	unreg := make([]time.Duration, 0, samples)
	extra := make([]string, 0, samples)
	for range samples {
		k := key(csID())
		t := time.Now()
		if _, err := kvs[0].Put(ctx, k, value(0)); err != nil {
			return fmt.Errorf("register: %w", err)
		}
		reg = append(reg, time.Since(t))
		extra = append(extra, k)
	}
	for _, k := range extra {
		t := time.Now()
		if err := kvs[0].Delete(ctx, k); err != nil {
			return fmt.Errorf("unregister: %w", err)
		}
		unreg = append(unreg, time.Since(t))
	}
	res.regP50, res.regP99 = csQ(reg, 0.5), csQ(reg, 0.99)
	res.unregP50 = csQ(unreg, 0.5)

	// A node dies: its entries are not refreshed any more and stay until
	// the TTL. One agent of the dead node, put now for the last time,
	// is watched until it is gone, while the live nodes refresh all of
	// theirs over one refresh period (the traffic to keep n present).
	deadKey := key(csID())
	if _, err := kvs[csNodes-1].Put(ctx, deadKey, value(csNodes-1)); err != nil {
		return err
	}
	t0 := time.Now()
	gone := make(chan error, 1)
	go func() {
		for {
			_, err := kvReq.Get(ctx, deadKey)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				res.goneMs = float64(time.Since(t0).Microseconds()) / 1e3
				gone <- nil
				return
			}
			if err != nil && ctx.Err() != nil {
				gone <- err
				return
			}
			if time.Since(t0) > csTTL+30*time.Second {
				gone <- fmt.Errorf("a dead node's entry is still there %v after its last put (TTL %v)", time.Since(t0).Round(time.Second), csTTL)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var refreshed int
	err = csKeep(ctx, srv, res, func(ctx context.Context) {
		t := time.Now()
		var err error
		refreshed, err = putAll(ctx, nil, csRefresh)
		if err != nil {
			refreshed = -1
		}
		res.refreshRate = float64(refreshed) / time.Since(t).Seconds()
	})
	if err != nil {
		return err
	}
	if refreshed < len(ids) {
		return fmt.Errorf("refresh: %d of %d entries refreshed in %v", refreshed, len(ids), csRefresh)
	}
	res.dirAfter = csDirBytes(srv.dir)
	res.rssAfter, _ = srv.rss()
	if err := <-gone; err != nil {
		return err
	}
	return nil
}

func csNodeSubject(i int) string { return fmt.Sprintf("peerport.v1.node.node-%d", i) }

func csFigures(r *Report, n, samples int, a, b *csResult) {
	const base = "subjects"
	addAs := func(name string, vb, va float64, unit, baseName, note string) {
		r.add(Figure{Part: "cluster", Name: "presence KV: " + name, Value: vb, Unit: unit, Baseline: va, BaseName: baseName, Note: note})
	}
	add := func(name string, vb, va float64, unit, note string) { addAs(name, vb, va, unit, base, note) }
	nn := float64(n)
	add("register p50", b.regP50, a.regP50, "µs", fmt.Sprintf("one agent at a time, %d samples: KV Put until its ack (file store, 1 replica) vs SUB + flush (until the server has it; the broker does not wait for the flush)", samples))
	add("register p99", b.regP99, a.regP99, "µs", "")
	add("register rate", b.regRate, a.regRate, "/s", fmt.Sprintf("%d agents from %d nodes at once: %d concurrent Puts per node vs SUBs flushed once per node", n, csNodes, csPutters))
	add("lookup p50", b.lookP50, a.lookP50, "µs", fmt.Sprintf("a lookup that reaches the holding node, %d samples: KV Get then the request to the node it names, vs the request on the agent's subject", samples))
	add("lookup p99", b.lookP99, a.lookP99, "µs", "")
	add("lookup, Get alone p50", b.getP50, a.lookP50, "µs", fmt.Sprintf("the KV Get alone (direct get; p99 %.4g µs) vs the whole request on the agent's subject: KV adds this to every introduction", b.getP99))
	add("absent p50", b.absentP50, a.absentP50, "µs", "a lookup of an agent nobody holds: Get, key not found, vs request, no responders")
	add("unregister p50", b.unregP50, a.unregP50, "µs", "KV Delete (a tombstone, kept until the TTL) vs UNSUB + flush")
	add("node death, agent gone", b.goneMs, a.goneMs, "ms", fmt.Sprintf(
		"KV: time from a dead node's last put of an entry until a Get finds none: the TTL (%v) plus the server's expiry lag; a node dying just before a refresh leaves entries TTL-%v. "+
			"Subjects: time from the node's connection closing (what a SIGKILL does) until a request for one of its agents gets no responders; the server had dropped all %d of its subscriptions at %.3g ms. "+
			"A host gone without a FIN is noticed by the server's pings instead (default 2 min x 2)", csTTL, csRefresh, n/csNodes, a.goneAllMs))
	add("server RSS per agent", float64(b.rssN-b.rssBefore)/nn, float64(a.rssN-a.rssBefore)/nn, "B", fmt.Sprintf(
		"nats-server VmRSS with %d agents minus fresh (JetStream on for both): KV %.1f -> %.1f MiB (%.1f MiB after one refresh period), subjects %.1f -> %.1f MiB. "+
			"One NATS server: in a NATS cluster every server also holds the interest of every subscription (routes), and a replicated (R3) bucket stores and replicates every put; neither is measured here",
		n, mib(b.rssBefore), mib(b.rssN), mib(b.rssAfter), mib(a.rssBefore), mib(a.rssN)))
	addAs("stored bytes", float64(b.storeBytes), float64(b.rawBytes), "B", "raw key+value", fmt.Sprintf(
		"the bucket's stream bytes for %d entries vs their raw key + value bytes (the baseline here); subjects store nothing. File store directory: %.2f MiB after registering, %.2f MiB after one refresh period",
		n, mib(b.dirBytes), mib(b.dirAfter)))
	needed := nn / csRefresh.Seconds()
	r.add(Figure{Part: "cluster", Name: "presence KV: refreshes needed", Value: needed, Unit: "/s", Note: fmt.Sprintf(
		"%d agents, TTL %v, refreshed every TTL/3 (%v) so that one missed refresh does not drop an agent; achieved %.4g/s from %d nodes. Subjects need none: a subscription lasts as long as its connection",
		n, csTTL, csRefresh, b.refreshRate, csNodes)})
	keepNote := func(what string, va float64) string {
		return fmt.Sprintf("%s over one refresh period (%v) keeping %d agents present, the KV refreshing every entry; subjects, the same window on their own server with nothing to do: %.4g (a zero baseline shows as none)", what, a.window, n, va)
	}
	add("NATS msgs to keep present", b.keepMsgs, a.keepMsgs, "msg/s", keepNote("messages through nats-server, in + out (/varz)", a.keepMsgs))
	add("NATS bytes to keep present", b.keepByte, a.keepByte, "B/s", keepNote("bytes through nats-server, in + out (/varz)", a.keepByte))
	add("server CPU to keep present", b.keepCPU, a.keepCPU, "% core", keepNote("nats-server CPU, utime + stime (/proc)", a.keepCPU))
}

// keep runs work over one refresh period and measures the server's
// traffic and CPU over it: what keeping the agents present costs.
func csKeep(ctx context.Context, s *natsServer, res *csResult, work func(context.Context)) error {
	var el, c0, c1 float64
	v, err := s.over(ctx, func() error {
		c0, _ = csCPU(s.pid())
		t0 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, res.window+5*time.Second)
		defer cancel()
		work(wctx)
		if d := time.Until(t0.Add(res.window)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		el = time.Since(t0).Seconds()
		c1, _ = csCPU(s.pid())
		return nil
	})
	if err != nil {
		return err
	}
	res.keepMsgs = float64(v.InMsgs+v.OutMsgs) / el
	res.keepByte = float64(v.InBytes+v.OutBytes) / el
	res.keepCPU = 100 * (c1 - c0) / el
	return nil
}

func csConnect(url, name string) (*nats.Conn, error) {
	return nats.Connect(url, nats.Name("peerport bench "+name), nats.MaxReconnects(0))
}

// csID is a random agent ID in the broker's form: 32 bytes, lower base32.
func csID() string {
	var b [32]byte
	rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// csQ is the nearest-rank quantile q of d, in microseconds.
func csQ(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*q+0.999999) - 1
	return float64(s[max(0, min(i, len(s)-1))].Nanoseconds()) / 1e3
}

// csCPU is a process's user + system CPU time, in seconds.
func csCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("bad stat")
	}
	u, _ := strconv.ParseFloat(f[11], 64)  // field 14, utime
	st, _ := strconv.ParseFloat(f[12], 64) // field 15, stime
	return (u + st) / 100, nil             // clock ticks (USER_HZ, 100 on Linux)
}

func csDirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
