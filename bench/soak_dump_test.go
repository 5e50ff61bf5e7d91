package main

import (
	"reflect"
	"testing"
)

func TestGoroutineCounts(t *testing.T) {
	dump := `SIGQUIT: quit
PC=0x40816e m=0 sigcode=0

goroutine 0 gp=0x547360 m=0 mp=0x548120 [idle]:
runtime.schedule()
	/usr/local/go/src/runtime/proc.go:4164 +0xb1

goroutine 1 gp=0x1 m=nil [sleep]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
	/usr/local/go/src/runtime/proc.go:462 +0xce
time.Sleep(0x34630b8a000)
	/usr/local/go/src/runtime/time.go:363 +0x165
main.main()
	/tmp/sq/main.go:4 +0x45

goroutine 7 gp=0x2 m=nil [IO wait, 3 minutes]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
	/usr/local/go/src/runtime/proc.go:462 +0xce
internal/poll.(*pollDesc).wait(0x1?, 0x1?, 0x0)
	/usr/local/go/src/internal/poll/fd_poll_runtime.go:84 +0x27
net.(*conn).Read(0xc0001, {0x1, 0x2, 0x3})
	/usr/local/go/src/net/net.go:196 +0x45
github.com/peerport/peerport/mux.(*Stream).pump(0xc0002)
	/work/mux/stream.go:10 +0x45
created by github.com/peerport/peerport/mux.New in goroutine 1
	/work/mux/mux.go:20 +0x45

goroutine 8 gp=0x3 m=nil [IO wait]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
	/usr/local/go/src/runtime/proc.go:462 +0xce
net.(*conn).Read(0xc0001, {0x1, 0x2, 0x3})
	/usr/local/go/src/net/net.go:196 +0x45
github.com/peerport/peerport/mux.(*Stream).pump(0xc0003)
	/work/mux/stream.go:10 +0x45

rax    0x0
rbx    0x0
`
	want := []string{
		"   2  github.com/peerport/peerport/mux.(*Stream).pump",
		"   1  main.main",
	}
	if got := goroutineCounts(dump); !reflect.DeepEqual(got, want) {
		t.Errorf("goroutineCounts:\n got %q\nwant %q", got, want)
	}
}
