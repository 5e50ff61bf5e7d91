package nat

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// FuzzServeConn feeds arbitrary bytes as a client's stream to ServeConn, the
// STUN-over-TCP loop the broker runs on its STUN ports (FuzzServe covers the
// decoder alone). Over loopback TCP: ServeConn must not panic, must return
// once the client has sent everything and half-closed (or reset a stream
// it cannot frame), and what it sent back
// must be whole STUN messages, at most one per message the client sent.
func FuzzServeConn(f *testing.F) {
	f.Add(newRequest(0).Raw)
	f.Add(append(newRequest(0).Raw, newRequest(changePort).Raw...))
	f.Add(newRequest(0).Raw[:19])
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(append(newRequest(0).Raw, 0x40, 0, 0, 4, 1, 2, 3, 4)) // then ChannelData
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	s := NewServer(ServerConfig{ConnTimeout: 10 * time.Second})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.ServeConn(context.Background(), sc) }()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var got bytes.Buffer
		drained := make(chan error, 1)
		go func() {
			_, err := io.Copy(&got, c)
			drained <- err
		}()
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		select {
		case <-served:
		case <-time.After(5 * time.Second): // well under ConnTimeout: a hang
			t.Fatal("ServeConn did not return after the client half-closed")
		}
		if err := <-drained; errors.Is(err, syscall.ECONNRESET) {
			return // closed with input unread (garbage): a reset, answers may be cut
		} else if err != nil {
			t.Fatalf("reading answers: %v", err)
		}
		answers := 0
		for got.Len() > 0 {
			raw, err := ReadMessage(&got)
			if err != nil {
				t.Fatalf("answer %d is not a whole STUN message: %v", answers, err)
			}
			var m stun.Message
			if err := stun.Decode(raw, &m); err != nil {
				t.Fatalf("answer %d does not decode: %v", answers, err)
			}
			answers++
		}
		if max := len(data) / 20; answers > max {
			t.Fatalf("%d answers to %d bytes", answers, len(data))
		}
	})
}
