package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/secure"
)

// BrokerFile holds the broker URL saved by `agent login`.
const BrokerFile = "broker.url"

// Login checks that the broker at u accepts this agent's token, so a wrong
// URL fails now and not at the first share. Of a URL with several
// addresses, the first node that answers decides.
// proxyURL is the HTTP CONNECT proxy to go through; nil: the environment's.
func Login(ctx context.Context, id *secure.Identity, u secure.BrokerURL, proxyURL *url.URL, log logrus.FieldLogger) error {
	c, err := dialAny(ctx, newBrokerDialer(id, proxyURL), u, log)
	if err != nil {
		return err
	}
	return c.conn.Close()
}

// SaveBroker stores u in stateDir (mode 0600: the token is a secret).
func SaveBroker(stateDir string, u secure.BrokerURL) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("save broker URL: %w", err)
	}
	return secure.WriteFileAtomic(filepath.Join(stateDir, BrokerFile), []byte(u.String()+"\n"), 0o600)
}

// LoadBroker returns the saved broker URL, or nil when none was saved.
func LoadBroker(stateDir string) (*secure.BrokerURL, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, BrokerFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read saved broker URL: %w", err)
	}
	u, err := secure.ParseBrokerURL(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("saved broker URL in %s: %w; run `agent login` again", stateDir, err)
	}
	return &u, nil
}
