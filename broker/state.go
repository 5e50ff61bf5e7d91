package broker

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/peerport/peerport/internal/secure"
)

// Files of the broker's state directory.
const (
	KeyFile   = "broker.key" // PEM PKCS#8 ed25519, 0600
	TokenFile = "token"      // one line, 0600
)

// ErrBadState is returned for a state file that exists but cannot be used.
// It is never replaced silently: agents hold URLs made from it.
var ErrBadState = errors.New("unusable broker state")

// tokenRE admits generated tokens and hand-picked ones that need no escaping
// in a URL's user part.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{16,128}$`)

// State is what a broker keeps across restarts: its key (hence its pin) and
// the token agents log in with.
type State struct {
	Key   ed25519.PrivateKey
	Cert  tls.Certificate
	Pin   secure.Pin
	Token string
}

// LoadOrCreateState reads the broker state in dir, creating dir (0700), the
// key and the token on first use.
func LoadOrCreateState(dir string) (*State, error) {
	if dir == "" {
		return nil, errors.New("broker state: no state directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("broker state: %w", err)
	}
	key, err := secure.LoadOrCreateKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("broker state: %w; restore the file, or delete it to make a new key (agents then need the new broker URL)", err)
	}
	// A fresh certificate each start is fine: the pin covers the key only.
	cert, err := secure.SelfSignedCert(key, "peerport-broker")
	if err != nil {
		return nil, fmt.Errorf("broker state: %w", err)
	}
	token, err := loadOrCreateToken(filepath.Join(dir, TokenFile))
	if err != nil {
		return nil, fmt.Errorf("broker state: %w", err)
	}
	return &State{Key: key, Cert: cert, Pin: secure.PinOf(cert.Leaf), Token: token}, nil
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return createToken(path)
	}
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	return parseToken(path, b)
}

func parseToken(path string, b []byte) (string, error) {
	tok := strings.TrimSpace(string(b))
	if !tokenRE.MatchString(tok) {
		return "", fmt.Errorf("read token %s: %w: want one line of 16-128 characters a-z A-Z 0-9 . _ ~ -; fix it, or delete it to make a new one (agents then need the new broker URL)", path, ErrBadState)
	}
	return tok, nil
}

func createToken(path string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	tok := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	if err := secure.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token: %w", err)
	}
	return tok, nil
}

// URL is the broker URL agents log in with, for a broker reachable at addr
// (host:port).
func (st *State) URL(addr string) secure.BrokerURL {
	return secure.BrokerURL{Token: st.Token, Addr: addr, Pin: st.Pin}
}
