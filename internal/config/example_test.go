package config

import (
	"bytes"
	"os"
	"reflect"
	"slices"
	"strings"
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

// TestExampleConfig keeps config.example.yaml in step with the types: the
// agent document is refused for its placeholders and loads once they are
// replaced, the broker document loads, every field of the types appears with
// a comment, and the broker document shows exactly the defaults.
func TestExampleConfig(t *testing.T) {
	agentDoc, brokerDoc := exampleDocs(t)
	const name = "config.example.yaml#agent"
	// What a user who copies the example (or gets it from install.sh) sees.
	_, err := ParseAgent(name, agentDoc)
	want := []string{
		name + ":12: broker: still the example's placeholder; replace it with the URL your broker printed (pp://TOKEN@HOST:PORT#PIN)",
		name + ":72: shares[0].allow[0]: still the example's agent ID; replace it with the ID of an agent to admit (`agent id` prints it), or remove it",
		name + ":83: connects[0].peer: still the example's agent ID; replace it with the sharer's (`agent id` on that machine prints it)",
	}
	if g := errLines(err); !reflect.DeepEqual(g, want) {
		t.Errorf("agent document as is:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(want, "\n  "))
	}
	for _, ph := range []string{exampleBrokerHost, exampleBrokerToken, exampleTicketPrefix, exampleAllowID, examplePeerID} {
		if !bytes.Contains(agentDoc, []byte(ph)) {
			t.Errorf("placeholder %q is not in %s any more: update placeholder.go", ph, examplePath)
		}
	}
	c := newCreds(t)
	edited := strings.NewReplacer(
		exampleBrokerToken+"@"+exampleBrokerHost, "tok@broker.peerport.test",
		exampleAllowID, c.id, examplePeerID, c.id2,
	).Replace(string(agentDoc))
	a, err := ParseAgent(name, []byte(edited))
	if err != nil {
		t.Fatalf("agent document with the placeholders replaced: %v", err)
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
