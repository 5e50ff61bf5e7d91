package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestCA: an issued certificate verifies against the CA's pool for each of
// its names, DNS or IP, and its files and the root's load back.
func TestCA(t *testing.T) {
	ca := NewCA(t, "test root")
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "test root" {
		t.Fatalf("root: IsCA %v, CN %q", ca.Cert.IsCA, ca.Cert.Subject.CommonName)
	}
	now := time.Now().Truncate(time.Second)
	c := ca.Issue(t, now.Add(-time.Hour), now.Add(time.Hour), "broker.test", "127.0.0.1", "::1")
	if c.Leaf == nil || c.Leaf.Subject.CommonName != "broker.test" || !c.Leaf.NotAfter.Equal(now.Add(time.Hour)) {
		t.Fatalf("leaf %+v", c.Leaf)
	}
	if !slices.Equal(c.Leaf.DNSNames, []string{"broker.test"}) ||
		!slices.EqualFunc(c.Leaf.IPAddresses, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, net.IP.Equal) {
		t.Errorf("leaf names %v, IPs %v", c.Leaf.DNSNames, c.Leaf.IPAddresses)
	}
	for _, name := range []string{"broker.test", "127.0.0.1", "::1"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: ca.Pool}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if d := ca.Issue(t, now, now.Add(time.Hour), "broker.test"); d.Leaf.SerialNumber.Cmp(c.Leaf.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}

	dir := t.TempDir()
	certFile, keyFile := WritePair(t, dir, "broker", c)
	if certFile != filepath.Join(dir, "broker.crt") || keyFile != filepath.Join(dir, "broker.key") {
		t.Errorf("files %s, %s", certFile, keyFile)
	}
	if fi, err := os.Stat(keyFile); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode())
	}
	got, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Leaf.Equal(c.Leaf) {
		t.Error("the written pair is another certificate")
	}
	root := filepath.Join(dir, "root.pem")
	ca.WriteRoot(t, root)
	b, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(b) || !pool.Equal(ca.Pool) {
		t.Error("the written root is not the CA's")
	}
}
