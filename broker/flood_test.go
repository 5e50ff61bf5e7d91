//go:build linux

package broker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/testutil"
)

// The fd flood (issue 14 #1) runs the broker in a child process (this test
// binary, re-executed) under a lowered RLIMIT_NOFILE, so the parent can
// flood it without running out of descriptors itself.
const (
	floodChildEnv = "PEERPORT_TEST_FLOOD_CHILD" // the child's state dir
	floodNoFile   = 192                         // the child's fd limit, soft and hard
	floodConns    = 300                         // idle connections to its TURN port
)

// floodChild runs the broker when this process is the flood test's child;
// it returns false in the test process itself.
func floodChild() bool {
	dir := os.Getenv(floodChildEnv)
	if dir == "" {
		return false
	}
	lim := syscall.Rlimit{Cur: floodNoFile, Max: floodNoFile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		os.Exit(2)
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Options{
		Listen: "127.0.0.1:0", StateDir: dir, Log: log, Version: "test", NoSTUN: true,
		TURNListen: "127.0.0.1:0",
		TURN:       RelayConfig{RelayIP: netip.MustParseAddr("127.0.0.1"), AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		os.Exit(2)
	}
	fmt.Printf("ADDRS %s %s\n", r.Addr, r.TURN)
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	cancel()
	<-r.Done
	os.Exit(0)
	return true
}

// TestTURNFlood (issue 14 #1): idle connections from one host to the TURN
// port, more than the broker has descriptors, leave an agent able to log in
// and a TURN client of it able to allocate; the flood's connections that
// were let in are closed when their pre-authentication deadline passes.
// On the code before the limits, the flood took every descriptor (accept4:
// too many open files) and the login's handshake timed out.
func TestTURNFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), floodChildEnv+"="+dir)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr := &testutil.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		stdin.Close()
		if !waited {
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", tail(stderr.String(), 40))
		}
	}()
	sc := bufio.NewScanner(stdout)
	var control, turnAddr string
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "ADDRS" {
			control, turnAddr = f[1], f[2]
			break
		}
	}
	if control == "" {
		t.Fatal("the broker child printed no addresses")
	}
	go io.Copy(io.Discard, stdout)
	st, err := LoadOrCreateState(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{state: st, dial: func(t *testing.T) net.Conn {
		c, err := net.DialTimeout("tcp", control, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}}

	// The flood: idle connections from 127.0.0.2, bytes never sent.
	flood := make([]net.Conn, 0, floodConns)
	var mu sync.Mutex
	var dialErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for range floodConns {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			c, err := d.Dial("tcp", turnAddr)
			if err != nil {
				mu.Lock()
				dialErr = err
				mu.Unlock()
			}
			if err == nil {
				mu.Lock()
				flood = append(flood, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	time.Sleep(500 * time.Millisecond) // let the broker accept what it will
	fds := countFDs(cmd.Process.Pid)

	// An agent logs in, shares, is introduced over the relay and allocates.
	c, err := h.handshake(t, newIdentity(t), st.Pin)
	t.Logf("flood of %d connections (%d dialed): broker fds %d of %d; login handshake: %v (a dial error: %v)", floodConns, len(flood), fds, floodNoFile, err, dialErr)
	if err != nil {
		t.Fatalf("login under the flood: %v", err)
	}
	c.close()
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk)
	mustAllocate(t, dialTURN(t, turnAddr, in.TURN.Username, in.TURN.Password).AllocateTCP)

	// Every flood connection is closed by the broker: at once (refused) or
	// at its pre-authentication deadline.
	deadline := time.Now().Add(20 * time.Second)
	open := 0
	for _, fc := range flood {
		fc.SetReadDeadline(deadline)
		if _, err := fc.Read(make([]byte, 1)); err != nil && isTimeout(err) {
			open++
		}
	}
	t.Logf("flood connections still open after the deadline: %d; broker fds now %d", open, countFDs(cmd.Process.Pid))
	if open > 0 {
		t.Errorf("%d idle flood connections still open after 20s", open)
	}
	stdin.Close()
	waited = true
	if err := cmd.Wait(); err != nil {
		t.Errorf("broker child: %v", err)
	}
}

func countFDs(pid int) int {
	es, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(len(ls)-n, 0):], "\n")
}
