package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// syntaxError turns a failure of the YAML parser into one *Error that points
// at the cause, in plain words, with a hint for the usual mistakes.
//
// yaml.v3 says little about where: its "line N" is often the start of the
// enclosing block rather than the problem, it is left out on the first line,
// and there is never a column. So the place is found again from the source:
// the shortest prefix of whole lines that fails with the same problem ends
// on the line where the parser gave up, and the text of that line (and the
// one above it) tells the column and the likely cause. Quotes and brackets
// are reported where they open, because the parser notices an unclosed one
// only where it gave up, often at the end of the file.
func syntaxError(name string, data []byte, err error) error {
	src := newSource(data)
	e := src.diagnose(parserProblem(err))
	e.File, e.Err = name, err
	return e
}

var yamlLineRE = regexp.MustCompile(`^line \d+: `)

// parserProblem is yaml's message without its "yaml: " and "line N: ".
func parserProblem(err error) string {
	return yamlLineRE.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "")
}

// source is a configuration file cut into lines, to locate parser problems.
type source struct {
	data  []byte
	lines []string // each line without its line break
	ends  []int    // offset in data just past each line's break
}

func newSource(data []byte) *source {
	s := &source{data: data}
	for start := 0; start < len(data); {
		end, next := len(data), len(data)
		if i := bytes.IndexByte(data[start:], '\n'); i >= 0 {
			end, next = start+i, start+i+1
		}
		s.lines = append(s.lines, strings.TrimSuffix(string(data[start:end]), "\r"))
		s.ends = append(s.ends, next)
		start = next
	}
	return s
}

// line is the text of line n (1-based), or "" past the end.
func (s *source) line(n int) string {
	if n < 1 || n > len(s.lines) {
		return ""
	}
	return s.lines[n-1]
}

// failingLine finds the line where the parser gives up with problem: the end
// of the shortest prefix of whole lines that fails the same way. A bisection
// keeps a large file to a few dozen parses; a prefix that fails differently
// (it cut a quoted value or a bracket in two) counts as not failing.
func (s *source) failingLine(problem string) int {
	lo, hi := 1, max(len(s.lines), 1)
	for lo < hi {
		mid := lo + (hi-lo)/2
		if err := parseDocs(s.data[:s.ends[mid-1]]); err != nil && parserProblem(err) == problem {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// parseDocs parses data as decode does, up to its second document.
func parseDocs(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for range 2 {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
	return nil
}

// diagnose locates problem in s and says it in plain words.
func (s *source) diagnose(problem string) *Error {
	switch {
	case strings.Contains(problem, "UTF-8") || strings.Contains(problem, "UTF-16") ||
		problem == "control characters are not allowed" || problem == "invalid Unicode character":
		if e := s.badCharacter(); e != nil {
			return e
		}
	case problem == "found unexpected end of stream" || problem == "did not find expected node content" ||
		problem == "did not find expected ',' or ']'" || problem == "did not find expected ',' or '}'":
		if e := s.unclosed(); e != nil {
			return e
		}
	case strings.HasPrefix(problem, "unknown anchor '"):
		if e := s.unknownAnchor(strings.TrimSuffix(strings.TrimPrefix(problem, "unknown anchor '"), "' referenced")); e != nil {
			return e
		}
	}

	n := s.failingLine(problem)
	text := s.line(n)
	e := &Error{Line: n, Column: max(firstNonBlank(text), 1), Msg: plainProblem(problem)}
	switch problem {
	case "found character that cannot start any token", "found a tab character that violates indentation",
		"found a tab character where an indentation space is expected":
		if c, inIndent := tabColumn(text); c > 0 {
			e.Column, e.Msg = c, "tab character where a value should start"
			if inIndent {
				e.Msg = "tab character in indentation"
			}
			e.Hint = fmt.Sprintf("YAML indents with spaces; line %d has a tab at column %d", n, c)
		} else if c, r := reservedStart(text); c > 0 {
			e.Column, e.Msg = c, fmt.Sprintf("a value cannot start with %q", string(r))
			e.Hint = "put the value in quotes"
		}
	case "found unknown escape character", "did not find expected hexdecimal number",
		"found invalid Unicode character escape code":
		// Most often a Windows path in double quotes: "C:\Users" reads \U as
		// the start of an 8-digit character code.
		if c, esc := badEscape(text); c > 0 {
			e.Column, e.Msg = c, fmt.Sprintf(`"%s" in a double-quoted string is not a valid escape`, esc)
			e.Hint = `write \\ for a backslash, or quote with ' instead, which keeps backslashes as they are`
		}
	case "did not find expected node content":
		if c := emptyEntry(text); c > 0 {
			e.Column, e.Msg = c, "expected a value before this comma"
		}
	case "mapping values are not allowed in this context":
		if key, val, c := secondColon(text); c > 0 {
			e.Column, e.Msg = c, fmt.Sprintf("the value of %q holds \": \", which YAML reads as a second key", key)
			e.Hint = "quote the value"
			if !strings.ContainsAny(val, `"\`) && shown(key, val) == val {
				e.Hint += ": " + key + ": " + strconv.Quote(val)
			}
			return e
		}
		if e := s.missingSpaceAbove(n); e != nil {
			return e
		}
		e.Hint = s.indentHint(n)
	case "could not find expected ':'":
		if e := s.missingSpaceAbove(n + 1); e != nil {
			return e
		}
		if e := s.missingSpaceAbove(n); e != nil {
			return e
		}
		e.Hint = `write "key: value", or indent this line further to continue the value above`
	case "did not find expected key", "did not find expected '-' indicator":
		e.Hint = s.indentHint(n)
	case "block sequence entries are not allowed in this context":
		if i := strings.Index(text, ": - "); i >= 0 {
			e.Column = utf8.RuneCountInString(text[:i]) + 3
			e.Hint = "start the list on the next line, indented under its key"
		} else {
			e.Hint = s.indentHint(n)
		}
	}
	return e
}

// plainProblem rewrites the parser's wording for a reader who does not know
// YAML's grammar; a problem without a rewrite keeps the parser's words.
func plainProblem(problem string) string {
	switch problem {
	case "did not find expected key":
		return "this line does not line up with the keys above"
	case "did not find expected '-' indicator":
		return "this line does not line up with the list above"
	case "mapping values are not allowed in this context":
		return "a key cannot start here"
	case "could not find expected ':'":
		return `expected ":" after a key`
	case "did not find expected node content":
		return "expected a value here"
	case "did not find expected ',' or ']'":
		return `expected "," or "]" in the list in brackets`
	case "did not find expected ',' or '}'":
		return `expected "," or "}" in the mapping in braces`
	case "found unexpected end of stream":
		return "the file ends in the middle of a value"
	case "found character that cannot start any token":
		return "a character that cannot start a value"
	case "block sequence entries are not allowed in this context":
		return `a list item ("- ") cannot start here`
	case "mapping keys are not allowed in this context":
		return `a "?" key cannot start here`
	case "found unexpected document indicator":
		return `"---" or "..." inside a value`
	case "did not find expected alphabetic or numeric character":
		return "an anchor (&) or alias (*) needs a name"
	}
	return problem
}

// indentHint compares the indentation of line n with the nearest line above
// it that holds something: a list item with the items above, anything else
// with where the key above begins.
func (s *source) indentHint(n int) string {
	text := s.line(n)
	here := firstNonBlank(text)
	above := 0
	for i := n - 1; i >= 1; i-- {
		if t := s.line(i); !blankOrComment(t) {
			above = contentColumn(t)
			if contentColumn(text) != here { // this line is a list item
				above = firstNonBlank(t)
			}
			break
		}
	}
	if here == 0 || above == 0 {
		return "check the indentation of this line against the line above"
	}
	return fmt.Sprintf("check the indentation of this line against the line above (column %d here, column %d above)", here, above)
}

// keyNoSpaceRE matches a line that reads "key:value": a key, a colon, and
// no space. A colon before "/" is a URL's ("http://"), not a key's.
var keyNoSpaceRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_-]*):([^\s/].*)$`)

// missingSpaceAbove reports "key:value" on the nearest line above n that
// holds something. YAML reads such a line as a string that the next lines
// continue, so the parser only gives up a line later.
func (s *source) missingSpaceAbove(n int) *Error {
	for i := n - 1; i >= 1; i-- {
		t := s.line(i)
		if blankOrComment(t) {
			continue
		}
		r := []rune(t)
		start := contentColumn(t) - 1
		if start < 0 || start > len(r) {
			return nil
		}
		m := keyNoSpaceRE.FindStringSubmatch(strings.TrimRight(cutComment(string(r[start:])), " \t"))
		if m == nil {
			return nil
		}
		return &Error{Line: i, Column: start + utf8.RuneCountInString(m[1]) + 1,
			Msg:  fmt.Sprintf("%q is read as one value, not as a key and its value", m[1]+":"+shown(m[1], m[2])),
			Hint: "put a space after the colon: " + keyValue(m[1], m[2])}
	}
	return nil
}

// secretKey reports whether key holds a value that must not be repeated in
// a message, which may end up in a log.
func secretKey(key string) bool {
	switch key {
	case "broker", "ticket", "secret", "proxy":
		return true
	}
	return false
}

// keyValue shows "key: value" as an example in a hint, leaving out a value
// that is long or a secret.
func keyValue(key, val string) string { return `"` + key + ": " + shown(key, val) + `"` }

// shown is val as a message may repeat it: "..." for a secret or a long one.
func shown(key, val string) string {
	if secretKey(key) || utf8.RuneCountInString(val) > 24 {
		return "..."
	}
	return val
}

// unclosed reports the quote or bracket that is still open where the
// parser gave up, at the place it opens, or a bracket that closes nothing.
func (s *source) unclosed() *Error {
	f := s.scanFlow()
	what := map[rune]string{'[': "list", '{': "mapping", ']': "list", '}': "mapping"}
	closer := map[rune]rune{'[': ']', '{': '}'}
	switch {
	case f.quote == '"':
		return &Error{Line: f.quoteAt.line, Column: f.quoteAt.col,
			Msg: "the double-quoted string that starts here is never closed", Hint: `add the closing " where the value ends`}
	case f.quote == '\'':
		return &Error{Line: f.quoteAt.line, Column: f.quoteAt.col,
			Msg: "the single-quoted string that starts here is never closed", Hint: `add the closing ' where the value ends (a ' inside it is written '')`}
	case len(f.open) > 0:
		o := f.open[len(f.open)-1]
		e := &Error{Line: o.at.line, Column: o.at.col, Msg: fmt.Sprintf("the %q that starts here is never closed", string(o.ch)),
			Hint: fmt.Sprintf("end the %s with %q", what[o.ch], string(closer[o.ch]))}
		if f.bad != 0 {
			e.Hint += fmt.Sprintf(" before the %q at line %d, column %d", string(f.bad), f.badAt.line, f.badAt.col)
		}
		return e
	case f.bad != 0:
		opener := map[rune]rune{']': '[', '}': '{'}
		return &Error{Line: f.badAt.line, Column: f.badAt.col, Msg: fmt.Sprintf("%q closes nothing", string(f.bad)),
			Hint: fmt.Sprintf("remove it, or start the %s with %q", what[f.bad], string(opener[f.bad]))}
	}
	return nil
}

type pos struct{ line, col int } // 1-based

type opener struct {
	ch rune
	at pos
}

// flowScan is what a rough pass over the source found of quotes and brackets.
type flowScan struct {
	quote   rune // the quote still open at the end, or 0
	quoteAt pos
	open    []opener // brackets open at the end, or where a closer did not match
	bad     rune     // a closer that matches no open bracket, or 0
	badAt   pos
}

// scanFlow follows quotes, brackets, comments and block scalars closely
// enough to find which quote or bracket never closes. It is not a YAML
// parser: it runs only after the real one failed, to say where.
func (s *source) scanFlow() flowScan {
	var f flowScan
	match := map[rune]rune{']': '[', '}': '{'}
	block := -1 // while >= 0, a block scalar's text: lines indented past this column
	for i, text := range s.lines {
		r := []rune(text)
		if block >= 0 {
			if firstNonBlank(text) == 0 || firstNonBlank(text)-1 > block {
				continue
			}
			block = -1
		}
		valueStart := true // a quote or bracket here opens one, in block context too
		content := contentColumn(text) - 1
	line:
		for j := 0; j < len(r); j++ {
			c, at := r[j], pos{i + 1, j + 1}
			if f.quote != 0 {
				switch {
				case f.quote == '"' && c == '\\':
					j++
				case f.quote == '"' && c == '"', f.quote == '\'' && c == '\'' && (j+1 == len(r) || r[j+1] != '\''):
					f.quote, valueStart = 0, false
				case f.quote == '\'' && c == '\'':
					j++ // '' is a quote inside the string
				}
				continue
			}
			if c == ' ' || c == '\t' {
				continue
			}
			if c == '#' && (j == 0 || r[j-1] == ' ' || r[j-1] == '\t') {
				break
			}
			flow := len(f.open) > 0
			endsToken := j+1 == len(r) || r[j+1] == ' ' || r[j+1] == '\t'
			switch {
			case (c == '"' || c == '\'') && valueStart:
				f.quote, f.quoteAt = c, at
				continue
			case (c == '[' || c == '{') && (flow || valueStart):
				f.open = append(f.open, opener{c, at})
				valueStart = true
				continue
			case (c == ']' || c == '}') && flow:
				if f.open[len(f.open)-1].ch != match[c] {
					f.bad, f.badAt = c, at
					return f
				}
				f.open = f.open[:len(f.open)-1]
			case (c == ']' || c == '}') && valueStart:
				f.bad, f.badAt = c, at
				return f
			case c == ',' && flow, c == ':' && (flow || endsToken):
				valueStart = true
				continue
			case c == '-' && !flow && valueStart && endsToken:
				continue // a list item; its value comes next
			case (c == '|' || c == '>') && !flow && valueStart:
				block = max(content, 0)
				if j <= content { // "- |": the text belongs to the item
					block = max(j-2, 0)
				}
				break line
			}
			valueStart = false
		}
	}
	return f
}

// unknownAnchor points at the first use of alias *name.
func (s *source) unknownAnchor(name string) *Error {
	for i, text := range s.lines {
		for off := 0; ; {
			j := strings.Index(text[off:], "*"+name)
			if j < 0 {
				break
			}
			j += off
			end := j + 1 + len(name)
			if end == len(text) || strings.ContainsRune(" \t,[]{}", rune(text[end])) {
				return &Error{Line: i + 1, Column: utf8.RuneCountInString(text[:j]) + 1,
					Msg:  fmt.Sprintf("alias %q refers to no anchor", "*"+name),
					Hint: fmt.Sprintf("put %q on the value to repeat, above this line", "&"+name)}
			}
			off = j + 1
		}
	}
	return nil
}

// badCharacter points at the first byte that is not UTF-8 or is a control
// character YAML refuses.
func (s *source) badCharacter() *Error {
	line, col := 1, 1
	for off := 0; off < len(s.data); {
		r, size := utf8.DecodeRune(s.data[off:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &Error{Line: line, Column: col, Msg: fmt.Sprintf("byte 0x%02x is not UTF-8 text", s.data[off]),
				Hint: "save the file as UTF-8"}
		case r == '\n':
			line, col = line+1, 0
		case r < 0x20 && r != '\t' && r != '\r', r == 0x7f, r >= 0x80 && r < 0xa0 && r != 0x85, r == 0xfffe, r == 0xffff:
			return &Error{Line: line, Column: col, Msg: fmt.Sprintf("control character %U is not allowed", r),
				Hint: "is this a text file? remove the character"}
		}
		col++
		off += size
	}
	return nil
}

// firstNonBlank is the column of the first character of text that is not a
// space or tab; 0 for a blank line.
func firstNonBlank(text string) int {
	for j, c := range []rune(text) {
		if c != ' ' && c != '\t' {
			return j + 1
		}
	}
	return 0
}

// contentColumn is the column where a line's key or value starts, past its
// indentation and list-item dashes; 0 for a blank line.
func contentColumn(text string) int {
	r := []rune(text)
	for j := 0; j < len(r); j++ {
		switch {
		case r[j] == ' ' || r[j] == '\t':
		case r[j] == '-' && (j+1 == len(r) || r[j+1] == ' ' || r[j+1] == '\t'):
		default:
			return j + 1
		}
	}
	return 0
}

func blankOrComment(text string) bool {
	c := firstNonBlank(text)
	return c == 0 || []rune(text)[c-1] == '#'
}

// tabColumn finds the first tab of text, preferring one in the indentation
// (before the key or value, list dashes included).
func tabColumn(text string) (col int, inIndent bool) {
	r := []rune(text)
	content := contentColumn(text)
	for j, c := range r {
		if c == '\t' {
			return j + 1, content == 0 || j+1 < content
		}
	}
	return 0, false
}

// reservedStart finds a value starting with a character YAML reserves.
func reservedStart(text string) (int, rune) {
	r := []rune(text)
	for j, c := range r {
		if strings.ContainsRune("@`%", c) && (j == 0 || strings.ContainsRune(" \t[{,:", r[j-1])) {
			return j + 1, c
		}
	}
	return 0, 0
}

// badEscape finds the first backslash escape of text that double-quoted YAML
// does not know, or a \x, \u or \U without its hex digits; it returns the
// escape's column and the escape.
func badEscape(text string) (int, string) {
	r := []rune(text)
	digits := map[rune]int{'x': 2, 'u': 4, 'U': 8}
	for j := 0; j+1 < len(r); j++ {
		if r[j] != '\\' {
			continue
		}
		c := r[j+1]
		if !strings.ContainsRune("0abt\tnvfre \"/\\N_LPxuU", c) {
			return j + 1, string(r[j : j+2])
		}
		for k := range digits[c] {
			if j+2+k >= len(r) || !strings.ContainsRune("0123456789abcdefABCDEF", r[j+2+k]) {
				return j + 1, string(r[j : j+2])
			}
		}
		j++
	}
	return 0, ""
}

// emptyEntry finds a comma in brackets with no value before it: "[a,, b]".
func emptyEntry(text string) int {
	r := []rune(text)
	prev := rune(0)
	for j, c := range r {
		if c == ',' && (prev == ',' || prev == '[' || prev == '{') {
			return j + 1
		}
		if c != ' ' && c != '\t' {
			prev = c
		}
	}
	return 0
}

// secondColon finds, in a "key: value" line, a ": " inside the value: YAML
// takes it for a second key. It returns the key, the value and the column
// of the second colon.
func secondColon(text string) (key, val string, col int) {
	r := []rune(text)
	start := contentColumn(text) - 1
	if start < 0 {
		return "", "", 0
	}
	k := keyEnd(r, start)
	if k < 0 {
		return "", "", 0
	}
	v := k + 1
	for v < len(r) && (r[v] == ' ' || r[v] == '\t') {
		v++
	}
	if v < len(r) && (r[v] == '"' || r[v] == '\'' || r[v] == '[' || r[v] == '{') {
		return "", "", 0
	}
	c := keyEnd(r, v)
	if c < 0 {
		return "", "", 0
	}
	return string(r[start:k]), strings.TrimRight(cutComment(string(r[v:])), " \t"), c + 1
}

// keyEnd is the index in r, from start, of the first ":" that ends a key
// (followed by a space or the end of the line); -1 when there is none
// before a comment.
func keyEnd(r []rune, start int) int {
	for j := start; j < len(r); j++ {
		switch {
		case r[j] == '#' && j > 0 && (r[j-1] == ' ' || r[j-1] == '\t'):
			return -1
		case r[j] == ':' && (j+1 == len(r) || r[j+1] == ' ' || r[j+1] == '\t'):
			return j
		}
	}
	return -1
}

// cutComment drops a trailing " # comment".
func cutComment(s string) string {
	for i := 1; i < len(s); i++ {
		if s[i] == '#' && (s[i-1] == ' ' || s[i-1] == '\t') {
			return s[:i]
		}
	}
	return s
}
