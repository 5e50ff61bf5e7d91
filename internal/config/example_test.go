package config

import (
	"bytes"
	"os"
	"reflect"
	"slices"
	"testing"

	"go.yaml.in/yaml/v3"
)

const examplePath = "../../config.example.yaml"

// exampleDocs splits config.example.yaml into its agent and broker documents.
func exampleDocs(t testing.TB) (agent, broker []byte) {
	t.Helper()
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(data, []byte("\n---\n"))
	if len(docs) != 2 {
		t.Fatalf("%s: want 2 documents separated by a --- line, got %d", examplePath, len(docs))
	}
	return docs[0], docs[1]
}

// TestExampleConfig keeps config.example.yaml in step with the types: both
// documents load, every field of the types appears with a comment, and the
// broker document shows exactly the defaults.
func TestExampleConfig(t *testing.T) {
	agentDoc, brokerDoc := exampleDocs(t)
	a, err := ParseAgent("config.example.yaml#agent", agentDoc)
	if err != nil {
		t.Fatalf("agent document: %v", err)
	}
	b, err := ParseBroker("config.example.yaml#broker", brokerDoc)
	if err != nil {
		t.Fatalf("broker document: %v", err)
	}
	if !reflect.DeepEqual(*b, defaultBroker()) {
		t.Errorf("broker document differs from the defaults:\n got  %+v\n want %+v", *b, defaultBroker())
	}
	var defLog Log
	defLog.SetDefaults()
	if a.Log != defLog {
		t.Errorf("agent log = %+v, want the defaults %+v", a.Log, defLog)
	}
	if len(a.Shares) == 0 || len(a.Connects) == 0 || len(a.Shares[0].Allow) == 0 {
		t.Errorf("agent document should show a share with allow and a connect: %+v", a)
	}

	for _, tc := range []struct {
		name string
		doc  []byte
		typ  reflect.Type
	}{
		{"agent", agentDoc, reflect.TypeOf(Agent{})},
		{"broker", brokerDoc, reflect.TypeOf(Broker{})},
	} {
		var root yaml.Node
		if err := yaml.Unmarshal(tc.doc, &root); err != nil {
			t.Fatal(err)
		}
		keys := map[string]bool{}
		commentedKeys(root.Content[0], "", keys, t)
		for _, p := range fieldPaths(tc.typ, "") {
			if _, ok := keys[p]; !ok {
				t.Errorf("%s document: field %s is missing from %s", tc.name, p, examplePath)
			} else if !keys[p] {
				t.Errorf("%s document: field %s has no comment", tc.name, p)
			}
		}
	}
}

// fieldPaths lists the dotted yaml paths of every field of t; list elements
// add no index ("shares.name").
func fieldPaths(t reflect.Type, prefix string) []string {
	var out []string
	for tag, i := range fieldsOf(t) {
		p := prefix + tag
		out = append(out, p)
		ft := t.Field(i).Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, fieldPaths(ft, p+".")...)
		}
	}
	slices.Sort(out)
	return out
}

// commentedKeys records each key path under n and whether a comment is on or
// just above it (for the first key of a list item, the comment sits on the item).
func commentedKeys(n *yaml.Node, prefix string, keys map[string]bool, t *testing.T) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := prefix + k.Value
			has := k.HeadComment != "" || k.LineComment != "" || (i == 0 && n.HeadComment != "")
			keys[p] = keys[p] || has
			commentedKeys(v, p+".", keys, t)
		}
	case yaml.SequenceNode:
		for _, item := range n.Content {
			commentedKeys(item, prefix, keys, t)
		}
	}
}
