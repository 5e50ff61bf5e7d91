package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestErrorsPoint: syntax errors, unknown keys and placeholders are reported
// at the place to fix, in plain words, with a hint for the usual causes.
func TestErrorsPoint(t *testing.T) {
	const exampleBroker = "pp://REPLACE-WITH-TOKEN@broker.example.com:7000#oIwob8Nt-IZh7fcNNYHpyN76ZY_eOs2qmZjBL9ySFaY"
	const share = "shares:\n  - name: web\n    target: 80\n"
	tests := []struct {
		name string
		yaml string
		want string
	}{
		// Tabs, wherever yaml notices them and whatever it calls them.
		{"tab in indentation", "log:\n\tlevel: info\n",
			"agent.yaml:2:1: tab character in indentation; hint: YAML indents with spaces; line 2 has a tab at column 1"},
		{"tab after a list dash", "shares:\n  -\tname: web\n    target: 80\n",
			"agent.yaml:2:4: tab character in indentation; hint: YAML indents with spaces; line 2 has a tab at column 4"},
		{"tab after spaces", "log:\n    level: info\n  \tformat: text\n",
			"agent.yaml:3:3: tab character in indentation; hint: YAML indents with spaces; line 3 has a tab at column 3"},
		{"tab on the first line", "\tlog: {}\n",
			"agent.yaml:1:1: tab character in indentation; hint: YAML indents with spaces; line 1 has a tab at column 1"},

		// Indentation: yaml blames line 1 or the line above; the culprit is this one.
		{"bad indentation in a list item", "shares:\n  - name: web\n   target: 80\n",
			"agent.yaml:3:4: this line does not line up with the list above; hint: check the indentation of this line against the line above (column 4 here, column 5 above)"},
		{"bad indentation in a mapping", "log:\n  level: info\n format: text\n",
			"agent.yaml:3:2: this line does not line up with the keys above; hint: check the indentation of this line against the line above (column 2 here, column 3 above)"},
		{"key indented under a value", "shares:\n  - name: web\n     target: 80\n",
			"agent.yaml:3:6: a key cannot start here; hint: check the indentation of this line against the line above (column 6 here, column 5 above)"},
		{"list item on the key's line", "shares: - name: web\n",
			`agent.yaml:1:9: a list item ("- ") cannot start here; hint: start the list on the next line, indented under its key`},

		// Quotes and brackets: yaml notices where it gives up; they are reported where they open.
		{"unclosed double quote", "broker: \"pp://tok@b:7000#x\nshares: []\n",
			`agent.yaml:1:9: the double-quoted string that starts here is never closed; hint: add the closing " where the value ends`},
		{"unclosed single quote", "shares:\n  - name: 'web\n    target: 80\n",
			`agent.yaml:2:11: the single-quoted string that starts here is never closed; hint: add the closing ' where the value ends (a ' inside it is written '')`},
		{"flow sequence never closed", share + "    allow: [abc, def\nconnects: []\n",
			`agent.yaml:4:12: the "[" that starts here is never closed; hint: end the list with "]"`},
		{"flow mapping closed by the wrong bracket", "shares: [{name: web, target: 80]\n",
			`agent.yaml:1:10: the "{" that starts here is never closed; hint: end the mapping with "}" before the "]" at line 1, column 32`},
		{"bracket that closes nothing", "log: }\n",
			`agent.yaml:1:6: "}" closes nothing; hint: remove it, or start the mapping with "{"`},
		{"empty list entry", "shares: [a,, b]\n",
			"agent.yaml:1:12: expected a value before this comma"},

		// A colon too few or too many.
		{"key:value before a line", "log:\n  level:info\n  format: text\n",
			`agent.yaml:2:8: "level:info" is read as one value, not as a key and its value; hint: put a space after the colon: "level: info"`},
		{"key:value alone", "log:\n  level:info\n",
			"agent.yaml:2:3: log: cannot decode !!str `level:info` into a mapping; hint: put a space after the colon: \"level: info\""},
		{"key:value keeps a secret out", "broker:pp://tok@host:7000#pin\n",
			"agent.yaml:1:1: cannot decode !!str `broker:pp://tok@h...` into a mapping; hint: put a space after the colon: \"broker: ...\""},
		{"second colon in a value", "path: auto: direct\n",
			`agent.yaml:1:11: the value of "path" holds ": ", which YAML reads as a second key; hint: quote the value: path: "auto: direct"`},

		// Characters.
		{"Windows path in double quotes", "state_dir: \"C:\\Users\\me\"\n" + share,
			`agent.yaml:1:15: "\U" in a double-quoted string is not a valid escape; hint: write \\ for a backslash, or quote with ' instead, which keeps backslashes as they are`},
		{"unknown escape", "state_dir: \"D:\\peerport\"\n",
			`agent.yaml:1:15: "\p" in a double-quoted string is not a valid escape; hint: write \\ for a backslash, or quote with ' instead, which keeps backslashes as they are`},
		{"reserved character", "state_dir: @home\n",
			`agent.yaml:1:12: a value cannot start with "@"; hint: put the value in quotes`},
		{"control character", "log:\n  level: in\x00fo\n",
			"agent.yaml:2:12: control character U+0000 is not allowed; hint: is this a text file? remove the character"},
		{"not UTF-8", "log:\n  level: \xe9\n",
			"agent.yaml:2:10: byte 0xe9 is not UTF-8 text; hint: save the file as UTF-8"},
		{"alias without anchor", "shares: *web\n",
			`agent.yaml:1:9: alias "*web" refers to no anchor; hint: put "&web" on the value to repeat, above this line`},
		{"syntax error in the second document", "log: {level: info}\n---\nx: [\n",
			`agent.yaml:3:4: the "[" that starts here is never closed; hint: end the list with "]"`},

		// Unknown keys: the nearest known one, if one is near.
		{"unknown top-level key", "log:\n  level: info\n\nsahres:\n  - name: web\n",
			`agent.yaml:4:1: unknown field "sahres"; did you mean "shares"?`},
		{"unknown nested key", "shares:\n  - name: web\n    tagret: 80\n",
			`agent.yaml:3:5: shares[0]: unknown field "tagret"; did you mean "target"?`},
		{"unknown key in a different case", "Shares: []\n",
			`agent.yaml:1:1: unknown field "Shares"; did you mean "shares"?`},
		{"unknown key with a dash", "state-dir: /x\n",
			`agent.yaml:1:1: unknown field "state-dir"; did you mean "state_dir"?`},
		{"unknown key, nothing near", "colour: red\n",
			`agent.yaml:1:1: unknown field "colour"`},
		{"wrong type", "shares:\n  - name: web\n    target: [80]\n",
			"agent.yaml:3:13: shares[0].target: cannot decode !!seq into string"},

		// Nothing to run, or the example's values left in place.
		{"empty file", "", nothingToRun},
		{"only comments", "# shares: come later\n\n# connects too\n", nothingToRun},
		{"only settings", "log: {level: debug}\nshares: []\n", nothingToRun},
		{"placeholder broker", "broker: " + exampleBroker + "\n" + share,
			"agent.yaml:1: broker: still the example's placeholder; replace it with the URL your broker printed (pp://TOKEN@HOST:PORT#PIN)"},
		{"placeholder host only", "broker: pp://realtoken@broker.example.com:7000#oIwob8Nt-IZh7fcNNYHpyN76ZY_eOs2qmZjBL9ySFaY\n" + share,
			"agent.yaml:1: broker: still the example's placeholder; replace it with the URL your broker printed (pp://TOKEN@HOST:PORT#PIN)"},
		{"example ticket", "connects:\n  - ticket: pp1c5rhe33lmvzc4zlymfwxa3dffzrw63j2g4ydam...\n",
			"agent.yaml:2: connects[0].ticket: still the example's ticket; replace it with the whole ticket `agent share` printed"},
		{"example peer", "connects:\n  - peer: g23hqnv6c3zykd3yhxdqsxeyab6yzejxjh6otkd3zmsejsazdtya\n    share: db\n",
			"agent.yaml:2: connects[0].peer: still the example's agent ID; replace it with the sharer's (`agent id` on that machine prints it)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseAgent("agent.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			if g := errLines(err); !reflect.DeepEqual(g, []string{tt.want}) {
				t.Errorf("error:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), tt.want)
			}
		})
	}
}

// A syntax error keeps the parser's own error as its cause, and the
// location as fields.
func TestSyntaxErrorFields(t *testing.T) {
	_, err := ParseAgent("agent.yaml", []byte("log:\n\tlevel: info\n"))
	var e *Error
	if !asError(err, &e) || e.Line != 2 || e.Column != 1 || e.Hint == "" || e.Err == nil ||
		!strings.Contains(e.Err.Error(), "found character that cannot start any token") {
		t.Errorf("error %+v", e)
	}
}

func TestNearestKey(t *testing.T) {
	agent := reflect.TypeOf(Agent{})
	for key, want := range map[string]string{
		"sahres": "shares", "share": "shares", "connect": "connects", "brokr": "broker",
		"lgo": "log", "metric_listen": "metrics_listen", "statedir": "state_dir", "rellay": "relay",
		"x": "", "base": "", "listen": "", "colour": "", strings.Repeat("s", 1000): "",
	} {
		if got := nearestKey(agent, key); got != want {
			t.Errorf("nearestKey(%.20q) = %q, want %q", key, got, want)
		}
	}
	for _, tt := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "abc", 0}, {"ab", "ba", 1}, {"sahres", "shares", 1}, {"kitten", "sitting", 3}, {"", "abc", 3}, {"ca", "abc", 3}} {
		if d := editDistance([]rune(tt.a), []rune(tt.b)); d != tt.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, d, tt.d)
		}
	}
}

func asError(err error, target **Error) bool { return errors.As(err, target) }
