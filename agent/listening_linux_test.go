package agent

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestListensIn(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
`
	tests := []struct {
		target string
		want   bool
	}{
		{"127.0.0.1:8080", true},  // its own address
		{"127.0.0.1:22", true},    // the unspecified address takes it
		{"127.0.0.2:8080", false}, // another address, same port
		{"127.0.0.1:80", false},   // established, not listening
		{"127.0.0.1:9999", false},
	}
	for _, tc := range tests {
		got := listensIn(bufio.NewScanner(strings.NewReader(table)), netip.MustParseAddrPort(tc.target))
		if got != tc.want {
			t.Errorf("listensIn(%s) = %v, want %v", tc.target, got, tc.want)
		}
	}
}

func TestTCPListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if l, known := tcpListening(addr); !known || !l {
		t.Errorf("tcpListening(%s) with a listener = %v, %v", addr, l, known)
	}
	ln.Close()
	if l, known := tcpListening(addr); !known || l {
		t.Errorf("tcpListening(%s) after close = %v, %v", addr, l, known)
	}
	if _, known := tcpListening("192.0.2.1:80"); known {
		t.Error("tcpListening judged another host's address")
	}
}
