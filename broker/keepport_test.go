package broker

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestKeepPort(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	o := Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), KeepPort: true, Log: log}
	ctx := context.Background()
	port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
	kept := func() string {
		b, _ := os.ReadFile(filepath.Join(o.StateDir, PortFile))
		return strings.TrimSpace(string(b))
	}

	ln, err := listen(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	first := port(ln)
	if kept() != strconv.Itoa(first) {
		t.Fatalf("kept port %q, want %d", kept(), first)
	}
	ln.Close()
	if ln, err = listen(ctx, o); err != nil {
		t.Fatal(err)
	}
	if port(ln) != first {
		t.Errorf("restart took port %d, want the kept %d", port(ln), first)
	}
	// Taken (ln still holds it): another port, kept in its place.
	other, err := listen(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ln.Close()
	if port(other) == first || kept() != strconv.Itoa(port(other)) {
		t.Errorf("with the kept port taken: port %d, kept %q; want a new one, kept", port(other), kept())
	}

	// Without KeepPort, or with a fixed port, nothing is kept.
	o2 := Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), Log: log}
	ln2, err := listen(ctx, o2)
	if err != nil {
		t.Fatal(err)
	}
	ln2.Close()
	if _, err := os.Stat(filepath.Join(o2.StateDir, PortFile)); !os.IsNotExist(err) {
		t.Errorf("a broker without KeepPort kept its port: %v", err)
	}
}
