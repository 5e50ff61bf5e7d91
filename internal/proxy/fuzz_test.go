package proxy

import (
	"bytes"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzReadResponse feeds arbitrary bytes to the parser of the proxy's answer
// to CONNECT. It must not panic, read past its bound, open a tunnel on
// anything but a 2xx status line, or show a credential or an unprintable byte
// in an error.
func FuzzReadResponse(f *testing.F) {
	const pass = "fuzz-S3cret"
	p := &url.URL{Scheme: "http", User: url.UserPassword("fuzzer", pass), Host: "proxy.test:3128"}
	f.Add([]byte(newExchange(p, "broker.test:443").request())) // a proxy echoing the request
	f.Fuzz(func(t *testing.T, data []byte) {
		x := newExchange(p, "broker.test:443")
		r := bytes.NewReader(data)
		rest, err := x.readAnswer(r)
		consumed := data[:len(data)-r.Len()]
		if len(consumed) > maxHeader {
			t.Fatalf("read %d bytes, bound %d", len(consumed), maxHeader)
		}
		if err == nil {
			if !bytes.HasSuffix(consumed, rest) {
				t.Fatalf("rest %q is not the end of what was read", rest)
			}
			header := string(consumed[:len(consumed)-len(rest)])
			if !strings.HasSuffix(header, "\n\n") && !strings.HasSuffix(header, "\n\r\n") {
				t.Fatalf("tunnel opened before the end of the header %q", header)
			}
			if code := firstStatus(header); code/100 != 2 && code/100 != 1 {
				t.Fatalf("tunnel opened on %q", header)
			}
			return
		}
		var pe *Error
		if !errors.As(err, &pe) {
			t.Fatalf("error %q (%T) is not an *Error", err, err)
		}
		switch {
		case errors.Is(err, ErrProxyAuth):
			if pe.Status != 407 && pe.Status != 401 {
				t.Fatalf("ErrProxyAuth with status %d", pe.Status)
			}
		case errors.Is(err, ErrProxyRefused):
			if pe.Status < 100 || pe.Status > 599 || pe.Status/100 == 2 || pe.Status == 407 || pe.Status == 401 {
				t.Fatalf("ErrProxyRefused with status %d", pe.Status)
			}
		case errors.Is(err, ErrBadProxyResponse):
			if pe.Status != 0 {
				t.Fatalf("ErrBadProxyResponse with status %d", pe.Status)
			}
		default:
			t.Fatalf("error %q is none of the answer sentinels", err)
		}
		msg := err.Error()
		for _, s := range x.secrets {
			if strings.Contains(msg, s) {
				t.Fatalf("error %q shows the secret %q", msg, s)
			}
		}
		if strings.ContainsFunc(msg, func(r rune) bool { return r < ' ' || r > '~' }) {
			t.Fatalf("error %q has unprintable text", msg)
		}
	})
}

// firstStatus is the status code on the first line of an HTTP answer, or 0.
func firstStatus(header string) int {
	line, _, _ := strings.Cut(header, "\n")
	proto, rest, ok := strings.Cut(strings.TrimSuffix(line, "\r"), " ")
	rest = strings.TrimLeft(rest, " ") // as http.ReadResponse does
	if !ok || !strings.HasPrefix(proto, "HTTP/") || len(rest) < 3 {
		return 0
	}
	code, err := strconv.Atoi(rest[:3])
	if err != nil {
		return 0
	}
	return code
}
