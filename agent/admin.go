package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The admin socket: each running agent listens on a unix socket in its state
// dir, mode 0600, so only its user can read its status (which holds tickets).

// RunDir is the directory of admin sockets inside a state dir.
const RunDir = "run"

// Status is what `agent status --json` prints: every running agent of one
// state dir. The field names are a stable interface for scripts and tests.
type Status struct {
	Agents []AgentStatus `json:"agents"`
}

// AgentStatus is one running agent process.
type AgentStatus struct {
	PID      int             `json:"pid"`
	ID       string          `json:"id"`
	Version  string          `json:"version"`
	Started  time.Time       `json:"started"`
	Brokers  []BrokerStatus  `json:"brokers"`
	Shares   []ShareStatus   `json:"shares"`
	Connects []ConnectStatus `json:"connects"`
	Peers    []PeerStatus    `json:"peers"`
	// Recent are the last connections forwarded, open or ended, newest first.
	Recent []ConnEvent `json:"recent,omitempty"`
	// Dashboard is the local status page's URL, its token included; absent
	// when the page is off.
	Dashboard string `json:"dashboard,omitempty"`
}

// BrokerStatus is one control session.
type BrokerStatus struct {
	// Addr is the node connected to; while disconnected, the URL's
	// addresses, comma-separated (one, for most brokers).
	Addr       string   `json:"addr"`
	Addrs      []string `json:"addrs,omitempty"` // all the URL's addresses, when it names several
	Connected  bool     `json:"connected"`
	Observed   string   `json:"observed,omitempty"` // our address as the broker sees it
	RTTMillis  float64  `json:"rtt_ms"`
	Reconnects int      `json:"reconnects"`
	LastError  string   `json:"last_error,omitempty"`
	NAT        string   `json:"nat,omitempty"`     // this side's NAT type as discovery saw it through this broker
	Verdict    string   `json:"verdict,omitempty"` // "direct likely" or "relay needed"
}

// ShareStatus is one share.
type ShareStatus struct {
	Name   string   `json:"name"`
	Target string   `json:"target"`
	Ticket string   `json:"ticket,omitempty"`
	Allow  []string `json:"allow,omitempty"`
	// Code is the share's open short code, CodeExpires when it expires;
	// Admitted the agents codes have admitted.
	Code        string     `json:"code,omitempty"`
	CodeExpires *time.Time `json:"code_expires,omitempty"`
	Admitted    []string   `json:"admitted,omitempty"`
	Streams     int64      `json:"streams"`
	Total       int64      `json:"connections"`
	BytesIn     int64      `json:"bytes_in"`
	BytesOut    int64      `json:"bytes_out"`
}

// ConnectStatus is one forward.
type ConnectStatus struct {
	Share     string `json:"share"`
	Peer      string `json:"peer"`
	Listen    string `json:"listen"`
	Streams   int64  `json:"streams"`
	Total     int64  `json:"connections"`
	BytesIn   int64  `json:"bytes_in"`
	BytesOut  int64  `json:"bytes_out"`
	LastError string `json:"last_error,omitempty"`
	// The peer session this forward rides, when one is up.
	Path       string  `json:"path,omitempty"`
	RTTMillis  float64 `json:"rtt_ms"`
	Reconnects int     `json:"reconnects"` // peer sessions re-made after one was lost
}

// PeerStatus is one peer session.
type PeerStatus struct {
	Peer      string        `json:"peer"`
	Role      string        `json:"role"` // "sharer": we share to it; "connector": we connect to it
	Path      string        `json:"path"` // "direct" or "relay"
	Remote    string        `json:"remote"`
	Local     string        `json:"local"`
	RTTMillis float64       `json:"rtt_ms"`
	Streams   int           `json:"streams"`
	BytesIn   int64         `json:"bytes_in"`
	BytesOut  int64         `json:"bytes_out"`
	Since     time.Time     `json:"since"`
	PunchMS   int64         `json:"punch_ms"` // hole punch, from the first SYN to the agreed connection
	Attempts  int           `json:"attempts"` // dial attempts across all candidates
	Pair      CandidatePair `json:"candidate_pair"`
	// Portmap names the port mapping a direct path came in through: this
	// side's gateway's protocol ("pcp", "natpmp", "upnp"), "peer" when it
	// was the peer's mapping, empty when none.
	Portmap  string `json:"portmap,omitempty"`
	LocalNAT string `json:"nat"`      // this side's NAT type when the path was made
	PeerNAT  string `json:"peer_nat"` // the peer's, as it reported
	// RelayKind says which relay carries a "relay" path: "turn" (the TURN
	// relay, RFC 6062) or "broker" (the broker relay on the broker's own
	// port). Relay is the relayed address on the TURN server, or the
	// broker's address; RelayedBytes what passed it both ways, TLS included.
	RelayKind    string `json:"relay_kind,omitempty"`
	Relay        string `json:"relay,omitempty"`
	RelayedBytes int64  `json:"relayed_bytes,omitempty"`
	// The session outlives its paths: Paused is true while it has none
	// (its connections wait), PathSince when it moved to this one,
	// Resumes how often it moved, PathHistory the last moves.
	Paused      bool         `json:"paused"`
	PathSince   time.Time    `json:"path_since"`
	Resumes     int          `json:"resumes"`
	PathLosses  int          `json:"path_losses"`
	Unacked     int          `json:"unacked_bytes"` // sent, kept until the peer acknowledges
	PathHistory []PathChange `json:"path_history"`
}

func (ps *peerSession) status() PeerStatus {
	rs := ps.rc.Stats()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	cur, out := ps.cur, ps.cur.out
	var relayed int64
	if out.relayed != nil {
		relayed = out.relayed.Load()
	}
	return PeerStatus{Peer: ps.key.peer.String(), Role: ps.key.role, Path: out.path,
		RelayKind: out.relayKind, Relay: out.relay, RelayedBytes: relayed, Portmap: out.portmap,
		Remote: cur.tls.RemoteAddr().String(), Local: cur.tls.LocalAddr().String(),
		RTTMillis: millis(time.Duration(ps.rtt.Load())), Streams: ps.sess.NumStreams(),
		BytesIn: ps.stats.bytesIn.Load(), BytesOut: ps.stats.bytesOut.Load(), Since: ps.since,
		PunchMS: out.punchMS(), Attempts: out.attempts(), Pair: out.pair(), LocalNAT: out.localNAT, PeerNAT: out.peerNAT,
		Paused: !rs.Attached, PathSince: cur.since, Resumes: rs.Resumes, PathLosses: rs.PathLosses, Unacked: rs.Unacked,
		PathHistory: append([]PathChange{}, ps.history...)}
}

// Status returns a snapshot of the agent.
func (a *Agent) Status() AgentStatus {
	st := AgentStatus{PID: os.Getpid(), ID: a.id.ID().String(), Version: Version, Started: a.started,
		Brokers: []BrokerStatus{}, Shares: []ShareStatus{}, Connects: []ConnectStatus{}, Peers: []PeerStatus{},
		Dashboard: a.dashboardURL()}
	st.Recent = a.recent.snapshot(time.Now())
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.brokers {
		st.Brokers = append(st.Brokers, b.status())
	}
	for _, s := range a.shares {
		ss := ShareStatus{Name: s.Name, Target: s.Target, Streams: s.stats.streams.Load(), Total: s.stats.total.Load(),
			BytesIn: s.stats.bytesIn.Load(), BytesOut: s.stats.bytesOut.Load()}
		if s.ticket != nil {
			ss.Ticket = s.ticket.String()
		}
		for _, id := range s.Allow {
			ss.Allow = append(ss.Allow, id.String())
		}
		for _, id := range s.admitted.list() {
			ss.Admitted = append(ss.Admitted, id.String())
		}
		if code, exp := a.codes.live(s.Name); code != "" {
			ss.Code, ss.CodeExpires = code, &exp
		}
		st.Shares = append(st.Shares, ss)
	}
	for _, f := range a.forwards {
		f.mu.Lock()
		cs := ConnectStatus{Share: f.share, Peer: f.peer.String(), Listen: f.listen,
			Streams: f.stats.streams.Load(), Total: f.stats.total.Load(), BytesIn: f.stats.bytesIn.Load(),
			BytesOut: f.stats.bytesOut.Load(), LastError: f.lastErr, Reconnects: f.reconnects}
		f.mu.Unlock()
		if ps := a.connectorSession(f.peer); ps != nil {
			cs.Path, cs.RTTMillis = ps.path(), millis(time.Duration(ps.rtt.Load()))
		}
		st.Connects = append(st.Connects, cs)
	}
	sort.Slice(st.Connects, func(i, j int) bool { return st.Connects[i].Listen < st.Connects[j].Listen })
	for _, ps := range a.sessions {
		st.Peers = append(st.Peers, ps.status())
	}
	sort.Slice(st.Brokers, func(i, j int) bool { return st.Brokers[i].Addr < st.Brokers[j].Addr })
	sort.Slice(st.Shares, func(i, j int) bool { return st.Shares[i].Name < st.Shares[j].Name })
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Peer < st.Peers[j].Peer })
	return st
}

// listenAdmin opens this process's admin socket.
func (a *Agent) listenAdmin() (*http.Server, error) {
	dir := filepath.Join(a.opts.StateDir, RunDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket dir: %w", err)
	}
	path := filepath.Join(dir, "agent-"+strconv.Itoa(os.Getpid())+".sock")
	os.Remove(path) // a previous process with our PID is long gone
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if a.opts.Reload == nil {
			http.Error(w, "no configuration file to reload", http.StatusConflict) // agent share/connect: skipped
			return
		}
		if err := a.Reload(); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		fmt.Fprintln(w, "reloaded")
	})
	mux.HandleFunc("POST /ping", a.servePing) // ping.go
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.spawn(func() { srv.Serve(ln) })
	return srv, nil
}

// QueryStatus asks every agent running with stateDir for its status. Sockets
// of agents that are gone are removed.
func QueryStatus(ctx context.Context, stateDir string) (Status, error) {
	st := Status{Agents: []AgentStatus{}}
	socks, err := filepath.Glob(filepath.Join(stateDir, RunDir, "agent-*.sock"))
	if err != nil {
		return st, err
	}
	for _, sock := range socks {
		as, err := queryOne(ctx, sock)
		if adminGone(err) {
			os.Remove(sock)
			continue
		}
		if err != nil {
			return st, fmt.Errorf("agent at %s: %w", sock, err)
		}
		st.Agents = append(st.Agents, as)
	}
	sort.Slice(st.Agents, func(i, j int) bool { return st.Agents[i].PID < st.Agents[j].PID })
	return st, nil
}

func queryOne(ctx context.Context, sock string) (AgentStatus, error) {
	var as AgentStatus
	resp, err := adminDo(ctx, sock, http.MethodGet, "/status")
	if err != nil {
		return as, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return as, fmt.Errorf("status %s", resp.Status)
	}
	return as, json.NewDecoder(resp.Body).Decode(&as)
}

func adminDo(ctx context.Context, sock, method, path string) (*http.Response, error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// RequestReload asks every agent up running with stateDir to reload its
// configuration (agents without a file are skipped); it returns how many
// did, and the first refusal.
func RequestReload(ctx context.Context, stateDir string) (int, error) {
	socks, err := filepath.Glob(filepath.Join(stateDir, RunDir, "agent-*.sock"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sock := range socks {
		resp, err := adminDo(ctx, sock, http.MethodPost, "/reload")
		if adminGone(err) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("agent at %s: %w", sock, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode == http.StatusConflict {
			continue // an agent share or connect: nothing to reload
		}
		if resp.StatusCode != http.StatusOK {
			return n, fmt.Errorf("reload refused: %s", strings.TrimSpace(string(body)))
		}
		n++
	}
	return n, nil
}
