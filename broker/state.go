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
	KeyFile        = "broker.key"  // PEM PKCS#8 ed25519, 0600
	TokenFile      = "token"       // one line, 0600
	TURNSecretFile = "turn.secret" // one line, 0600: the TURN relay's shared secret
)

// ErrBadState is returned for a state file that exists but cannot be used.
// It is never replaced silently: agents hold URLs made from it.
var ErrBadState = errors.New("unusable broker state")

// tokenRE admits generated tokens and hand-picked ones that need no escaping
// in a URL's user part.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{16,128}$`)

// turnSecretRE admits generated TURN secrets and hand-picked ones (say, a
// coturn static-auth-secret copied in): printable ASCII without spaces.
var turnSecretRE = regexp.MustCompile(`^[!-~]{16,256}$`)

// State is what a broker keeps across restarts: its key (hence its pin),
// the token agents log in with, and the shared secret of its TURN relay.
type State struct {
	Key   ed25519.PrivateKey
	Cert  tls.Certificate
	Pin   secure.Pin
	Token string
	// TURNSecret keys the relay's TURN REST credentials (HMAC-SHA1 of the
	// username): the text itself is the key, as coturn's static-auth-secret.
	// Changing it only invalidates credentials issued before.
	TURNSecret string
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
	turnSecret, err := loadOrCreateTURNSecret(filepath.Join(dir, TURNSecretFile))
	if err != nil {
		return nil, fmt.Errorf("broker state: %w", err)
	}
	return &State{Key: key, Cert: cert, Pin: secure.PinOf(cert.Leaf), Token: token, TURNSecret: turnSecret}, nil
}

// loadOrCreateTURNSecret reads the TURN secret, creating it (32 random
// bytes, base32) on first use. Unlike the token it is in no URL, so a lost
// one may be deleted to make a new one: only live credentials break.
func loadOrCreateTURNSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		var r [32]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("generate TURN secret: %w", err)
		}
		s := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(r[:]))
		err := secure.CreateFileExclusive(path, []byte(s+"\n"), 0o600)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("write TURN secret: %w", err)
		}
		b, err = os.ReadFile(path) // a broker starting beside us made it
	}
	if err != nil {
		return "", fmt.Errorf("read TURN secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if !turnSecretRE.MatchString(s) {
		return "", fmt.Errorf("read TURN secret %s: %w: want one line of 16-256 printable characters without spaces; fix it, or delete it to make a new one", path, ErrBadState)
	}
	return s, nil
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		tok, cerr := createToken(path)
		if !errors.Is(cerr, os.ErrExist) {
			return tok, cerr
		}
		b, err = os.ReadFile(path) // a broker starting beside us made it
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
	if err := secure.CreateFileExclusive(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token: %w", err)
	}
	return tok, nil
}

// URL is the broker URL agents log in with, for a broker reachable at addr
// (host:port).
func (st *State) URL(addr string) secure.BrokerURL {
	return secure.BrokerURL{Token: st.Token, Addr: addr, Pin: st.Pin}
}
