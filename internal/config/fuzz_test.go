package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// checkParsed holds for any input: an error wraps ErrInvalid; a config that
// loads validates again and survives a marshal round trip unchanged.
func checkParsed[T any](t *testing.T, c *T, err error, parse func(string, []byte) (*T, error), validate func(*T) error) {
	if err != nil {
		if c != nil {
			t.Fatalf("config returned with error %v", err)
		}
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		return
	}
	if err := validate(c); err != nil {
		t.Fatalf("loaded config does not validate again: %v", err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	back, err := parse("round-trip.yaml", out)
	if err != nil {
		t.Fatalf("re-parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("round trip changed the config:\n got  %+v\n want %+v", back, c)
	}
}

// checkSyntaxError holds for any input YAML cannot parse: the error is one
// *Error that points inside the file, at a line and a column.
func checkSyntaxError(t *testing.T, data []byte, err error) {
	if parseDocs(data) == nil {
		return
	}
	var e *Error
	if !errors.As(err, &e) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("syntax error %q is not one *Error", err)
	}
	src := newSource(data)
	if e.Line < 1 || e.Line > len(src.lines) || e.Column < 1 || e.Column > utf8.RuneCountInString(src.line(e.Line))+1 {
		t.Fatalf("syntax error %q points at %d:%d, outside the file (%d lines)", err, e.Line, e.Column, len(src.lines))
	}
}

func FuzzParseAgent(f *testing.F) {
	agentDoc, _ := exampleDocs(f)
	f.Add(agentDoc)
	f.Add([]byte("shares:\n  - name: web\n    target: 8080\nconnects:\n  - ticket: pp1abc\n    listen: 9000\n"))
	f.Add([]byte("a: &a [x, y]\nshares: [{name: a, target: 1, allow: *a}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseAgent("fuzz.yaml", data)
		checkParsed(t, c, err, ParseAgent, (*Agent).Validate)
		checkSyntaxError(t, data, err)
	})
}

func FuzzParseBroker(f *testing.F) {
	_, brokerDoc := exampleDocs(f)
	f.Add(brokerDoc)
	f.Add([]byte("listen: 7000\npublic_addr: \"[::1]:7000\"\nlimits: {idle_timeout: 1h, max_agents: 0}\n"))
	f.Add([]byte("listen: 443\nacme: {domain: Broker.Example.com., email: a@b.c, directory: \"https://ca/dir\", http_listen: 80}\n"))
	f.Add([]byte("tls: {cert_file: /etc/hostname, key_file: /nonexistent}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseBroker("fuzz.yaml", data)
		checkParsed(t, c, err, ParseBroker, (*Broker).Validate)
		checkSyntaxError(t, data, err)
	})
}
