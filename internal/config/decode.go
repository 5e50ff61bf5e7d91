package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxNodes caps the YAML nodes one decode visits. Aliases can make a small
// file expand to billions of values; a real config has a few hundred.
const maxNodes = 100_000

var durationType = reflect.TypeOf(time.Duration(0))

// decode strictly decodes the single YAML document in data into out (a
// pointer to a struct) and returns the line of every field path it set, for
// validation messages.
//
// It walks the yaml.Node tree itself instead of using yaml's struct decoding
// so that every error carries the dotted path of the field, not only a line.
func decode(name string, data []byte, out any) (map[string]int, error) {
	if len(data) > MaxFileSize {
		return nil, tooLarge(name)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]int{}, nil // an empty file is an empty config
		}
		return nil, syntaxError(name, data, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, &Error{File: name, Line: extra.Line, Msg: "more than one YAML document (---); put one configuration in a file"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(name, data, err)
	}
	d := &decoder{file: name, lines: map[string]int{}}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return d.lines, nil
		}
		root = root.Content[0]
	}
	d.value(root, reflect.ValueOf(out).Elem(), "")
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return d.lines, nil
}

type decoder struct {
	file  string
	lines map[string]int
	errs  []error
	nodes int
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.failHint(n, path, "", format, args...)
}

func (d *decoder) failHint(n *yaml.Node, path, hint, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// value decodes node n into v, which is addressable.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	d.nodes++
	if d.nodes == maxNodes+1 {
		d.fail(n, path, "more than %d values (aliases expanding too far?)", maxNodes)
	}
	if d.nodes > maxNodes {
		return
	}
	if path != "" {
		if _, ok := d.lines[path]; !ok {
			d.lines[path] = n.Line // the line where the value is written, even if it is an alias
		}
	}
	// An anchor never points at another alias, but a bound costs nothing.
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 8; i++ {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // "key:" or "key: ~" leaves the field unset, so defaults apply
	}
	switch {
	case v.Kind() == reflect.Struct:
		d.mapping(n, v, path)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "cannot decode %s into a list", describe(n))
			return
		}
		if len(n.Content) == 0 {
			return // keep nil: "[]" and an absent key mean the same
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.value(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	default:
		d.scalar(n, v, path)
	}
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.failHint(n, path, missingSpace(n, v.Type()), "cannot decode %s into a mapping", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "cannot use %s as a key", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			d.fail(k, path, "merge keys (<<) are not supported; put an anchor on the value instead")
			continue
		}
		key := k.Value
		if first, dup := seen[key]; dup {
			d.fail(k, path, "duplicate field %q (first at line %d)", key, first)
			continue
		}
		seen[key] = k.Line
		idx, ok := fields[key]
		if !ok {
			if near := nearestKey(v.Type(), key); near != "" {
				d.fail(k, path, "unknown field %q; did you mean %q?", key, near)
			} else {
				d.fail(k, path, "unknown field %q", key)
			}
			continue
		}
		child := key
		if path != "" {
			child = path + "." + key
		}
		d.value(val, v.Field(idx), child)
	}
}

func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "cannot decode %s into %s", describe(n), v.Type())
		return
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) || len(te.Errors) == 0 {
			d.fail(n, path, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return
		}
		msg := te.Errors[0]
		if i := strings.Index(msg, ": "); strings.HasPrefix(msg, "line ") && i >= 0 {
			msg = msg[i+2:]
		}
		msg = strings.Replace(msg, "cannot unmarshal", "cannot decode", 1)
		if v.Type() == durationType {
			msg += " (write a duration with a unit, e.g. 10s, 1m30s)"
		}
		d.fail(n, path, "%s", msg)
	}
}

// missingSpace is the hint for a mapping written as "key:value": YAML reads
// that as one string, and only a space after the colon makes it a key.
func missingSpace(n *yaml.Node, t reflect.Type) string {
	if n.Kind != yaml.ScalarNode || n.Style != 0 {
		return ""
	}
	key, val, ok := strings.Cut(n.Value, ":")
	if _, known := fieldsOf(t)[key]; !ok || !known || val == "" || strings.HasPrefix(val, " ") {
		return ""
	}
	return "put a space after the colon: " + keyValue(key, val)
}

// describe names a node's kind the way yaml's own errors do: !!seq, !!map, !!str `x`.
func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		v := n.Value
		if r := []rune(v); len(r) > 20 {
			v = string(r[:17]) + "..."
		}
		return fmt.Sprintf("%s `%s`", n.ShortTag(), v)
	}
	return n.ShortTag()
}

// fieldsOf maps the yaml tags of a struct type to field indexes.
func fieldsOf(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		m[tag] = i
	}
	return m
}
