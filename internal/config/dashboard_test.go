package config

import (
	"strings"
	"testing"
)

func TestAgentDashboard(t *testing.T) {
	for _, tc := range []struct {
		yaml, want, err string
	}{
		{"", "", ""},
		{"dashboard: 4041\n", "127.0.0.1:4041", ""},
		{"dashboard: localhost:0\n", "localhost:0", ""},
		{"dashboard: \"[::1]:4040\"\n", "[::1]:4040", ""},
		{"dashboard: off\n", DashboardOff, ""},
		{"dashboard: false\n", DashboardOff, ""},
		{"dashboard: 0.0.0.0:4040\n", "", `agent.yaml:1: dashboard: "0.0.0.0:4040" is not a loopback address`},
		{"dashboard: \":4040\"\n", "", `agent.yaml:1: dashboard: ":4040" is not a loopback address`},
		{"dashboard: 192.0.2.1:4040\n", "", "is not a loopback address"},
		{"dashboard: nowhere\n", "", `agent.yaml:1: dashboard: "nowhere" is not PORT or HOST:PORT`},
	} {
		t.Run(tc.yaml, func(t *testing.T) {
			c, err := ParseAgent("agent.yaml", []byte(tc.yaml+"shares: [{name: web, target: 80}]\n"))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Dashboard != tc.want {
				t.Fatalf("dashboard %q, want %q", c.Dashboard, tc.want)
			}
		})
	}
}
