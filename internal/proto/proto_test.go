package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	admit32 = bytes.Repeat([]byte{0xa5}, 32)
	relay32 = bytes.Repeat([]byte{0x5a}, RelayTokenSize)
	cands   = []Candidate{
		{Kind: KindHost, Addr: "192.0.2.10:40000"},
		{Kind: KindSrflx, Addr: "198.51.100.7:61000"},
		{Kind: KindObserved, Addr: "[2001:db8::1]:7001"},
		{Kind: KindRelay, Addr: "203.0.113.5:3478"},
	}
)

// filled holds one message of every type with every field set.
var filled = []Message{
	&Hello{Token: "tok-123", Version: "v1.2.3"},
	&Welcome{AgentID: strings.Repeat("a", 52), Observed: "198.51.100.7:61000", Version: "v1.2.3", TURN: "turn:203.0.113.1:3480?transport=tcp"},
	&Error{Code: CodeUnauthorized, Message: "bad token"},
	&Register{ID: 1, Share: "web", AdmitHash: admit32, Allow: []string{strings.Repeat("b", 52), strings.Repeat("c", 52)}},
	&Unregister{ID: 2, Share: "web"},
	&Result{ID: 3, Code: CodeLimit, Message: "too many shares"},
	&Connect{ID: 1<<64 - 1, Sharer: strings.Repeat("d", 52), Share: "web", Admit: admit32, Candidates: cands, Path: PathRelay},
	&Intro{Intro: 7, Connector: strings.Repeat("e", 52), Share: "web", Candidates: cands, Path: PathRelay,
		TURN: &TURN{URL: "turn:203.0.113.1:3480?transport=tcp", Username: "1800000000:" + strings.Repeat("f", 52), Password: "cGFzcw=="}},
	&IntroReply{Intro: 7, Candidates: cands, Code: CodeRefused, Message: "no", Path: PathRelay},
	&ConnectReply{ID: 9, Candidates: cands, Code: CodeNotFound, Message: "sharer offline", Path: PathRelay},
	&ConnectReply{ID: 10, Path: PathBroker, RelayToken: relay32},
	&Intro{Intro: 8, Connector: strings.Repeat("e", 52), Share: "web", Path: PathBroker, RelayToken: relay32},
	&Ping{Nonce: 42},
	&Pong{Nonce: 42},
	&Outcome{Result: OutcomeDirect, NAT: "cone", PeerNAT: "symmetric", PunchMS: 12},
	&RelayBind{Token: relay32},
	&Presence{ID: 9, Agent: "abc", Instance: "p1"},
	&CodeOpen{ID: 11, Share: "web", Slot: 7, TTLSeconds: 600},
	&CodeOpened{ID: 11, Slot: 7, TTLSeconds: 600, Code: CodeLimit, Message: "too many codes"},
	&CodeClose{ID: 12, Slot: 7},
	&CodeClaim{ID: 13, Slot: 7, Step: 2, Msg: []byte(`{"Role":0}`)},
	&CodeClaimReply{ID: 13, Msg: []byte("answer"), Code: CodeNotFound, Message: "no such code"},
	&CodePass{Pass: 14, Slot: 7, Step: 1, Connector: strings.Repeat("e", 52), Msg: []byte("a")},
	&CodePassReply{Pass: 14, Msg: []byte("b"), Code: CodeWrongCode, Message: "wrong code"},
}

func TestFilledCoversEveryType(t *testing.T) {
	seen := map[Type]bool{}
	for _, m := range filled {
		seen[m.Type()] = true
	}
	for ty := TypeHello; ty <= TypeCodePassReply; ty++ {
		if !seen[ty] {
			t.Errorf("type %d has no entry in filled", ty)
		}
	}
	if newMessage(0) != nil || newMessage(TypeCodePassReply+1) != nil {
		t.Error("a type beyond the known range makes a message; add it to filled")
	}
}

func TestEncodeDecode(t *testing.T) {
	for _, m := range filled {
		t.Run(fmt.Sprintf("%T", m), func(t *testing.T) {
			b, err := Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			if n := binary.BigEndian.Uint32(b); int(n) != len(b)-4 || b[4] != Version || Type(b[5]) != m.Type() {
				t.Fatalf("header % x for a %d-byte frame of type %d", b[:6], len(b), m.Type())
			}
			if !json.Valid(b[6:]) {
				t.Errorf("body %q is not JSON", b[6:])
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Errorf("Decode(Encode(m)) = %+v, want %+v", got, m)
			}
			// Zero values of every type round-trip too, where valid.
			zero := newMessage(m.Type())
			if zb, err := Encode(zero); err == nil {
				if zm, err := Decode(zb); err != nil {
					t.Errorf("zero %T: Encode accepts it but Decode says %v", zero, err)
				} else if zb2, _ := Encode(zm); !bytes.Equal(zb, zb2) {
					t.Errorf("zero %T: %q re-encodes to %q", zero, zb, zb2)
				}
			}
		})
	}
}

// TestWireFormat pins the frame layout of the package doc.
func TestWireFormat(t *testing.T) {
	b, err := Encode(&Ping{Nonce: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0, 0, 0, 13, 1, 11}, `{"nonce":1}`...)
	if !bytes.Equal(b, want) {
		t.Errorf("Encode(Ping{1}) = %q, want %q", b, want)
	}
}

func TestWriteRead(t *testing.T) {
	var buf bytes.Buffer
	for _, m := range filled {
		if err := Write(&buf, m); err != nil {
			t.Fatalf("Write %T: %v", m, err)
		}
	}
	for _, want := range filled {
		got, err := Read(&buf, 0)
		if err != nil {
			t.Fatalf("Read (want %T): %v", want, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Read = %+v, want %+v", got, want)
		}
	}
	// A clean end between frames is io.EOF itself, so callers can tell a
	// closed connection from a broken one.
	if _, err := Read(&buf, 0); err != io.EOF {
		t.Errorf("Read at end = %v, want io.EOF", err)
	}
}

func TestWriteReadPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		for _, m := range filled {
			if err := Write(a, m); err != nil {
				errc <- err
				return
			}
		}
		errc <- a.Close()
	}()
	for _, want := range filled {
		got, err := Read(b, 0)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Read = %+v, want %+v", got, want)
		}
	}
	if _, err := Read(b, 0); err != io.EOF {
		t.Errorf("Read after close = %v, want io.EOF", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func frame(length uint32, version byte, ty Type, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, length)
	return append(append(b, version, byte(ty)), body...)
}

// frameOf frames body correctly, bypassing Encode's validation.
func frameOf(ty Type, body string) []byte { return frame(uint32(2+len(body)), Version, ty, body) }

// TestReadTooLargeBeforeAllocating sends a header announcing 4 GiB and no
// body: Read must refuse it at once, neither waiting for the body nor
// allocating for it.
func TestReadTooLargeBeforeAllocating(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go a.Write(frame(0xffffffff, Version, TypePing, "")) // never closed: Read must not wait for more
	// A deadlock guard, not a timing assertion: a Read that waits for the
	// body would otherwise hang the test.
	b.SetReadDeadline(time.Now().Add(30 * time.Second))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Read(b, 0)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Read = %v, want ErrTooLarge", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("Read allocated %d bytes for a refused frame", n)
	}
}

func TestReadLimit(t *testing.T) {
	body := `{"nonce":1}` // 11 bytes: a 13-byte frame
	for _, tt := range []struct {
		max  int
		want error
	}{
		{0, nil},
		{13, nil},
		{12, ErrTooLarge},
		{1, ErrTooLarge},
	} {
		_, err := Read(bytes.NewReader(frameOf(TypePing, body)), tt.max)
		if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("Read(max %d) = %v, want %v", tt.max, err, tt.want)
		}
	}
	// The default limit applies to Decode and to Read with max 0.
	big := frameOf(TypeHello, `{"token":"`+strings.Repeat("x", MaxMessageSize)+`"}`)
	if _, err := Read(bytes.NewReader(big), 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Read of %d bytes = %v, want ErrTooLarge", len(big), err)
	}
	if _, err := Decode(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Decode of %d bytes = %v, want ErrTooLarge", len(big), err)
	}
}

func TestDecodeErrors(t *testing.T) {
	ping := `{"nonce":1}`
	for _, tt := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"version 0", frame(13, 0, TypePing, ping), ErrVersion},
		{"version 2", frame(13, 2, TypePing, ping), ErrVersion},
		{"version 255", frame(13, 255, TypePing, ping), ErrVersion},
		{"type 0", frame(13, Version, 0, ping), ErrUnknownType},
		{"type after the last", frame(13, Version, TypeCodePassReply+1, ping), ErrUnknownType},
		{"type 255", frame(13, Version, 255, ping), ErrUnknownType},
		{"length 0", frame(0, Version, TypePing, ""), ErrMalformed},
		{"length 1", frame(1, Version, TypePing, ""), ErrMalformed},
		{"empty body", frameOf(TypePing, ""), ErrMalformed},
		{"bad json", frameOf(TypePing, `{"nonce":`), ErrMalformed},
		{"json array", frameOf(TypePing, `[1]`), ErrMalformed},
		{"json string", frameOf(TypeHello, `"x"`), ErrMalformed},
		{"wrong field type", frameOf(TypePing, `{"nonce":"1"}`), ErrMalformed},
		{"negative id", frameOf(TypeResult, `{"id":-1}`), ErrMalformed},
		{"id overflow", frameOf(TypeResult, `{"id":18446744073709551616}`), ErrMalformed},
		{"trailing garbage", frameOf(TypePing, ping+`x`), ErrMalformed},
		{"two objects", frameOf(TypePing, ping+ping), ErrMalformed},
		{"admit not base64", frameOf(TypeConnect, `{"sharer":"s","share":"w","admit":"!!"}`), ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode(tt.frame); !errors.Is(err, tt.want) {
				t.Errorf("Decode = %v, want %v", err, tt.want)
			}
			if _, err := Read(bytes.NewReader(tt.frame), 0); !errors.Is(err, tt.want) {
				t.Errorf("Read = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecodeLengthMismatch(t *testing.T) {
	good, err := Encode(&Ping{Nonce: 1})
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(good) {
		if _, err := Decode(good[:n]); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode of %d/%d bytes = %v, want ErrMalformed", n, len(good), err)
		}
	}
	if _, err := Decode(append(good, ' ')); !errors.Is(err, ErrMalformed) {
		t.Errorf("Decode with a byte beyond the length = %v, want ErrMalformed", err)
	}
}

func TestReadTruncated(t *testing.T) {
	good, err := Encode(&Hello{Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n < len(good); n++ {
		_, err := Read(bytes.NewReader(good[:n]), 0)
		if n < headerSize && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Read of %d/%d bytes (truncated header) = %v, want io.ErrUnexpectedEOF", n, len(good), err)
		}
		if n >= headerSize && !errors.Is(err, ErrMalformed) {
			t.Errorf("Read of %d/%d bytes (truncated body) = %v, want ErrMalformed", n, len(good), err)
		}
	}
}

func TestValidation(t *testing.T) {
	long := strings.Repeat("x", maxString+1)
	many := make([]Candidate, MaxCandidates+1)
	for i := range many {
		many[i] = Candidate{Kind: KindHost, Addr: fmt.Sprintf("192.0.2.%d:1000", i+1)}
	}
	bad := func(addr string) []Candidate { return []Candidate{{Kind: KindHost, Addr: addr}} }
	tests := []struct {
		name string
		m    Message
	}{
		{"hello long token", &Hello{Token: long}},
		{"hello long version", &Hello{Version: long}},
		{"welcome long id", &Welcome{AgentID: long}},
		{"error without code", &Error{Message: "x"}},
		{"error long message", &Error{Code: CodeInternal, Message: long}},
		{"register empty share", &Register{ID: 1}},
		{"register long share", &Register{ID: 1, Share: long}},
		{"register admit hash 31", &Register{ID: 1, Share: "w", AdmitHash: admit32[:31]}},
		{"register admit hash 33", &Register{ID: 1, Share: "w", AdmitHash: append(admit32, 0)}},
		{"register too many allowed", &Register{ID: 1, Share: "w", Allow: make([]string, MaxAllow+1)}},
		{"register long allowed", &Register{ID: 1, Share: "w", Allow: []string{long}}},
		{"unregister long share", &Unregister{Share: long}},
		{"result long message", &Result{Message: long}},
		{"connect empty sharer", &Connect{Share: "w"}},
		{"connect empty share", &Connect{Sharer: "s"}},
		{"connect admit 1", &Connect{Sharer: "s", Share: "w", Admit: []byte{1}}},
		{"connect admit 31", &Connect{Sharer: "s", Share: "w", Admit: admit32[:31]}},
		{"connect admit 64", &Connect{Sharer: "s", Share: "w", Admit: append(admit32, admit32...)}},
		{"connect too many candidates", &Connect{Sharer: "s", Share: "w", Candidates: many}},
		{"connect candidate no port", &Connect{Sharer: "s", Share: "w", Candidates: bad("192.0.2.1")}},
		{"connect candidate hostname", &Connect{Sharer: "s", Share: "w", Candidates: bad("example.com:80")}},
		{"connect candidate port range", &Connect{Sharer: "s", Share: "w", Candidates: bad("192.0.2.1:65536")}},
		{"connect candidate empty", &Connect{Sharer: "s", Share: "w", Candidates: bad("")}},
		{"connect candidate unbracketed v6", &Connect{Sharer: "s", Share: "w", Candidates: bad("2001:db8::1:80")}},
		{"connect candidate long kind", &Connect{Sharer: "s", Share: "w", Candidates: []Candidate{{Kind: long, Addr: "192.0.2.1:1"}}}},
		{"intro too many candidates", &Intro{Connector: "c", Share: "w", Candidates: many}},
		{"intro bad candidate", &Intro{Connector: "c", Share: "w", Candidates: bad("x")}},
		{"connect unknown path", &Connect{Sharer: "s", Share: "w", Path: "carrier-pigeon"}},
		{"intro unknown path", &Intro{Connector: "c", Share: "w", Path: "p2p"}},
		{"intro turn without url", &Intro{Connector: "c", Share: "w", Path: PathRelay, TURN: &TURN{Username: "1:a", Password: "p"}}},
		{"intro turn without username", &Intro{Connector: "c", Share: "w", Path: PathRelay, TURN: &TURN{URL: "turn:h:1"}}},
		{"intro reply unknown path", &IntroReply{Path: "tor"}},
		{"connect reply unknown path", &ConnectReply{Path: "x"}},
		{"intro long connector", &Intro{Connector: long, Share: "w"}},
		{"intro reply too many candidates", &IntroReply{Candidates: many}},
		{"intro reply long message", &IntroReply{Message: long}},
		{"connect reply too many candidates", &ConnectReply{Candidates: many}},
		{"connect reply bad candidate", &ConnectReply{Candidates: bad("1.2.3.4:x")}},
		{"intro short relay token", &Intro{Connector: "c", Share: "w", Path: PathBroker, RelayToken: admit32[:31]}},
		{"connect reply long relay token", &ConnectReply{Path: PathBroker, RelayToken: append(relay32, 0)}},
		{"relay bind without token", &RelayBind{}},
		{"relay bind short token", &RelayBind{Token: []byte("abc")}},
		{"presence without agent", &Presence{ID: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Encode(tt.m); err == nil {
				t.Error("Encode accepted an invalid message")
			}
			// Decode is the line of defence: a peer's frame built by hand.
			body, err := json.Marshal(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Decode(frameOf(tt.m.Type(), string(body))); !errors.Is(err, ErrMalformed) {
				t.Errorf("Decode = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestValidationLimitsInclusive(t *testing.T) {
	atMost := strings.Repeat("x", maxString)
	maxCands := make([]Candidate, MaxCandidates)
	for i := range maxCands {
		maxCands[i] = Candidate{Kind: KindHost, Addr: fmt.Sprintf("192.0.2.%d:1000", i+1)}
	}
	allow := make([]string, MaxAllow)
	for i := range allow {
		allow[i] = strings.Repeat("a", 52)
	}
	for _, m := range []Message{
		&Hello{Token: atMost},
		&Register{ID: 1, Share: "w", Allow: allow},
		&Connect{Sharer: "s", Share: "w", Candidates: maxCands},
		&ConnectReply{Candidates: maxCands},
		&Connect{Sharer: "s", Share: "w", Candidates: []Candidate{{Kind: "", Addr: "[::1]:1"}}},
	} {
		b, err := Encode(m)
		if err != nil {
			t.Errorf("Encode %T at the limits: %v", m, err)
			continue
		}
		if got, err := Decode(b); err != nil || !reflect.DeepEqual(got, m) {
			t.Errorf("Decode %T at the limits = %v", m, err)
		}
	}
}

// TestEncodeWithinFrameLimit: a message Encode accepts is one the other
// side's Read accepts; otherwise the sender learns of the problem only when
// the peer drops the connection.
func TestEncodeWithinFrameLimit(t *testing.T) {
	allow := make([]string, MaxAllow)
	for i := range allow {
		allow[i] = strings.Repeat("a", maxString)
	}
	m := &Register{ID: 1, Share: "w", Allow: allow}
	b, err := Encode(m)
	if err != nil {
		return // refused at the sender: fine
	}
	if _, err := Decode(b); err != nil {
		t.Errorf("Encode produced a %d-byte frame that Decode refuses: %v", len(b), err)
	}
}

func TestErrorIsError(t *testing.T) {
	var err error = &Error{Code: CodeNotFound, Message: "sharer offline"}
	if err.Error() != "not_found: sharer offline" {
		t.Errorf("Error() = %q", err.Error())
	}
}
