package secure

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AgentID is an agent's ed25519 public key. Its text form is 52 characters of
// lowercase base32.
type AgentID [ed25519.PublicKeySize]byte

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// String returns the lowercase base32 form of the ID.
func (id AgentID) String() string { return strings.ToLower(b32.EncodeToString(id[:])) }

// Short returns a prefix of the ID for log lines.
func (id AgentID) Short() string { return id.String()[:12] }

// IsZero reports whether id is unset.
func (id AgentID) IsZero() bool { return id == AgentID{} }

// MarshalText implements encoding.TextMarshaler.
func (id AgentID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *AgentID) UnmarshalText(b []byte) error {
	v, err := ParseAgentID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseAgentID parses the text form of an agent ID.
func ParseAgentID(s string) (AgentID, error) {
	var id AgentID
	raw, err := b32.DecodeString(strings.ToUpper(strings.TrimSpace(s)))
	if err != nil || len(raw) != len(id) {
		return id, fmt.Errorf("%w: want 52 base32 characters, as printed by `agent id`", ErrBadAgentID)
	}
	copy(id[:], raw)
	return id, nil
}

// Identity is an agent's long-term ed25519 key pair.
type Identity struct {
	priv ed25519.PrivateKey
	id   AgentID
}

// NewIdentity returns a fresh random identity.
func NewIdentity() (*Identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity: %w", err)
	}
	return identityFromKey(priv), nil
}

func identityFromKey(priv ed25519.PrivateKey) *Identity {
	i := &Identity{priv: priv}
	copy(i.id[:], priv.Public().(ed25519.PublicKey))
	return i
}

// ID returns the identity's public ID.
func (i *Identity) ID() AgentID { return i.id }

// PrivateKey returns the identity's private key.
func (i *Identity) PrivateKey() ed25519.PrivateKey { return i.priv }

// IdentityFile is the name of the identity key inside a state dir.
const IdentityFile = "identity.key"

// LoadOrCreateIdentity reads the identity in dir, creating dir and a new
// identity on first use. The key file is written with mode 0600.
func LoadOrCreateIdentity(dir string) (*Identity, error) {
	priv, err := LoadOrCreateKey(filepath.Join(dir, IdentityFile))
	if err != nil {
		return nil, err
	}
	return identityFromKey(priv), nil
}

// LoadOrCreateKey reads a PEM PKCS#8 ed25519 key from path, or creates one
// (and the parent directory, mode 0700) when the file does not exist.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		priv, cerr := createKey(path)
		if !errors.Is(cerr, os.ErrExist) {
			return priv, cerr
		}
		// Another process created it first: its key is the identity.
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("read key %s: %w: not a PEM private key", path, ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w: %v", path, ErrBadKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("read key %s: %w: not ed25519", path, ErrBadKey)
	}
	return priv, nil
}

func createKey(path string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	if err := CreateFileExclusive(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	return priv, nil
}

// CreateFileExclusive writes data to a new file at path, complete or not at
// all, and fails with an error matching os.ErrExist when path exists. Of
// processes that start together on a fresh state dir, exactly one creates
// each file and the others read its content, so one state dir always
// means one identity (a rename, as WriteFileAtomic does, would let the last
// writer win while the others go on under a key no longer on disk).
func CreateFileExclusive(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// link(2), unlike rename(2), refuses to replace: whoever links first
	// wins, and the file appears with all its bytes.
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file and a rename,
// so a crash never leaves a half-written key or token behind.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	return os.Rename(tmp, path)
}

// writeTemp writes data, synced, to a new temporary file beside path and
// returns its name.
func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return "", err
	}
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}
