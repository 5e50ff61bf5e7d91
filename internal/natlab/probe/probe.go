// Package probe is the lab's tiny test program: a reflector that tells a
// TCP client the address it sees, a dialer that classifies the outcome
// (connected, refused, timeout), a TCP simultaneous-open puncher, an RTT and a
// bulk-transfer client, and a UDP counter. The lab's tests run it in lab
// namespaces, either as cmd/probe or by re-executing the test binary (see
// Main). Every line it prints is "key value ..." so tests can Expect it.
//
// Reflector protocol (TCP): the server sends "you=<addr>\n", then reads one
// command line: "echo" echoes until EOF; "sink" reads until EOF and answers
// "got <n>\n"; anything else (or EOF) closes.
package probe

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Main runs the probe with args (without the program name) and returns the
// exit code: 0 success, 1 error, 2 refused, 3 timeout.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: probe serve|dial|punch|rtt|bulk|udpsink|udpsend [flags]")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var err error
	code := 1
	switch args[0] {
	case "serve":
		addr := fs.String("listen", ":7001", "TCP address")
		if err = fs.Parse(args[1:]); err == nil {
			err = serve(ctx, *addr, stdout)
		}
	case "dial":
		to := fs.String("to", "", "address to dial")
		local := fs.Int("local", 0, "local port (SO_REUSEADDR+SO_REUSEPORT)")
		timeout := fs.Duration("timeout", 2*time.Second, "dial timeout")
		if err = fs.Parse(args[1:]); err == nil {
			return dial(ctx, *to, *local, *timeout, stdout)
		}
	case "punch":
		local := fs.Int("local", 40000, "local port")
		refl := fs.String("reflector", "", "reflector address (probe serve) to learn the mapping")
		timeout := fs.Duration("timeout", 4*time.Second, "deadline after the peer address arrives")
		if err = fs.Parse(args[1:]); err == nil {
			err = punch(ctx, *local, *refl, *timeout, stdin, stdout)
		}
	case "rtt":
		to := fs.String("to", "", "reflector address")
		n := fs.Int("n", 20, "round trips")
		if err = fs.Parse(args[1:]); err == nil {
			err = rtt(ctx, *to, *n, stdout)
		}
	case "bulk":
		to := fs.String("to", "", "reflector address")
		size := fs.Int64("bytes", 1<<20, "bytes to send")
		if err = fs.Parse(args[1:]); err == nil {
			err = bulk(ctx, *to, *size, stdout)
		}
	case "udpsink":
		addr := fs.String("listen", ":7002", "UDP address")
		idle := fs.Duration("idle", time.Second, "stop after this long without a packet (once one arrived)")
		max := fs.Duration("max", 20*time.Second, "stop after this long in any case")
		if err = fs.Parse(args[1:]); err == nil {
			err = udpsink(ctx, *addr, *idle, *max, stdout)
		}
	case "udpsend":
		to := fs.String("to", "", "UDP address")
		n := fs.Int("n", 1000, "datagrams")
		gap := fs.Duration("interval", 200*time.Microsecond, "gap between datagrams")
		if err = fs.Parse(args[1:]); err == nil {
			err = udpsend(ctx, *to, *n, *gap, stdout)
		}
	default:
		err = fmt.Errorf("unknown command %q", args[0])
	}
	if err != nil {
		fmt.Fprintf(stderr, "probe %s: %v\n", args[0], err)
		return code
	}
	return 0
}

func serve(ctx context.Context, addr string, stdout io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fmt.Fprintf(stdout, "accepted %s\n", c.RemoteAddr())
		go handle(c)
	}
}

func handle(c net.Conn) {
	defer c.Close()
	if _, err := fmt.Fprintf(c, "you=%s\n", c.RemoteAddr()); err != nil {
		return
	}
	br := bufio.NewReader(c)
	cmd, err := br.ReadString('\n')
	if err != nil {
		return
	}
	switch strings.TrimSpace(cmd) {
	case "echo":
		_, _ = io.Copy(c, br)
	case "sink":
		n, _ := io.Copy(io.Discard, br)
		fmt.Fprintf(c, "got %d\n", n)
	}
}

func classify(err error) (string, int) {
	var ne net.Error
	switch {
	case err == nil:
		return "connected", 0
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", 2
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout", 3
	}
	return "error " + err.Error(), 1
}

// dial connects, reports the outcome and, when connected to a reflector,
// the mapped address it saw: "result connected mapped=<addr> local=<addr>".
func dial(ctx context.Context, to string, local int, timeout time.Duration, stdout io.Writer) int {
	d := net.Dialer{Timeout: timeout, Control: reuse}
	if local != 0 {
		d.LocalAddr = &net.TCPAddr{Port: local}
	}
	c, err := d.DialContext(ctx, "tcp", to)
	res, code := classify(err)
	if err != nil {
		fmt.Fprintf(stdout, "result %s\n", res)
		return code
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Fprintf(stdout, "result connected mapped=%s local=%s\n", strings.TrimPrefix(strings.TrimSpace(line), "you="), c.LocalAddr())
	return 0
}

// punch learns its mapping from the reflector ("mapped <addr>"), reads the
// peer's mapping from stdin, then dials it from the same port (and accepts
// on it) until connected or the deadline: "connected <remote> <peer hello>"
// or "failed <last error>".
func punch(ctx context.Context, local int, refl string, timeout time.Duration, stdin io.Reader, stdout io.Writer) error {
	la := &net.TCPAddr{Port: local}
	lc := net.ListenConfig{Control: reuse}
	ln, err := lc.Listen(ctx, "tcp", la.String())
	if err != nil {
		return err
	}
	defer ln.Close()
	d := net.Dialer{Timeout: 2 * time.Second, Control: reuse, LocalAddr: la}
	rc, err := d.DialContext(ctx, "tcp", refl)
	if err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	line, err := bufio.NewReader(rc).ReadString('\n')
	rc.Close()
	if err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	mapped := strings.TrimPrefix(strings.TrimSpace(line), "you=")
	fmt.Fprintf(stdout, "mapped %s\n", mapped)
	peerLine, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the peer address: %w", err)
	}
	peer := strings.TrimSpace(peerLine)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	got := make(chan net.Conn, 2)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			got <- c
		}
	}()
	go func() { <-ctx.Done(); ln.Close() }()
	var (
		mu   sync.Mutex
		last error = context.DeadlineExceeded
	)
	go func() {
		for attempt := 0; attempt < 50 && ctx.Err() == nil; attempt++ {
			ad := d
			ad.Timeout = 700 * time.Millisecond
			c, err := ad.DialContext(ctx, "tcp", peer)
			if err == nil {
				got <- c
				return
			}
			mu.Lock()
			last = err
			mu.Unlock()
			// Refused comes back at once; do not spin.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	select {
	case c := <-got:
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "hello from %s\n", mapped)
		hello, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("connected to %s but no hello: %w", c.RemoteAddr(), err)
		}
		fmt.Fprintf(stdout, "connected %s %s\n", c.RemoteAddr(), strings.TrimSpace(hello))
		return nil
	case <-ctx.Done():
		mu.Lock()
		res, _ := classify(last)
		mu.Unlock()
		fmt.Fprintf(stdout, "failed %s\n", res)
		return nil
	}
}

func rtt(ctx context.Context, to string, n int, stdout io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		return err
	}
	if _, err := io.WriteString(c, "echo\n"); err != nil {
		return err
	}
	var rtts []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := io.WriteString(c, "x\n"); err != nil {
			return err
		}
		if _, err := br.ReadString('\n'); err != nil {
			return err
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	fmt.Fprintf(stdout, "rtt median=%d min=%d max=%d (µs)\n", rtts[len(rtts)/2].Microseconds(), rtts[0].Microseconds(), rtts[len(rtts)-1].Microseconds())
	return nil
}

func bulk(ctx context.Context, to string, size int64, stdout io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		return err
	}
	if _, err := io.WriteString(c, "sink\n"); err != nil {
		return err
	}
	start := time.Now()
	buf := make([]byte, 32<<10)
	for left := size; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return err
		}
		left -= k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "bulk bytes=%d ms=%d bps=%d (%s)\n", size, el.Milliseconds(), int64(float64(size*8)/el.Seconds()), strings.TrimSpace(line))
	return nil
}

func udpsink(ctx context.Context, addr string, idle, max time.Duration, stdout io.Writer) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	defer pc.Close()
	fmt.Fprintf(stdout, "listening %s\n", pc.LocalAddr())
	end := time.Now().Add(max)
	buf := make([]byte, 2048)
	seen := map[string]bool{}
	for ctx.Err() == nil {
		dl := end
		if len(seen) > 0 {
			dl = time.Now().Add(idle)
		}
		_ = pc.SetReadDeadline(dl)
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		seen[string(buf[:n])] = true
	}
	fmt.Fprintf(stdout, "received %d\n", len(seen))
	return nil
}

func udpsend(ctx context.Context, to string, n int, gap time.Duration, stdout io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	payload := make([]byte, 100)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		copy(payload, strconv.Itoa(i)+"/")
		if _, err := c.Write(payload); err != nil {
			return err
		}
		time.Sleep(gap)
	}
	fmt.Fprintf(stdout, "sent %d\n", n)
	return nil
}
