package agent

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/proto"
)

// ErrGaveUp ends a connect that never reached its share within its
// timeout (ConnectSpec.Timeout).
var ErrGaveUp = errors.New("gave up")

// ErrLoop refuses a connect whose listener its own share would dial.
var ErrLoop = errors.New("the share is this agent's own (the same state dir), so its target is on this machine, and its connections would loop back")

// waitingFor says, in a user's words, what a forward that cannot reach
// its sharer waits for.
func waitingFor(err error) string {
	var re *RemoteError
	switch {
	case errors.As(err, &re) && re.Code == proto.CodeNotFound:
		return "share not found: the sharer is not online, or no longer shares it"
	case errors.As(err, &re) && re.Code == proto.CodeNotRegistered:
		return "share not registered (yet): the sharer is online without it"
	case errors.As(err, &re) && re.Code == proto.CodeNoRelay:
		return "relay refused: the broker offers none"
	case errors.As(err, &re) && re.Code == proto.CodeLimit:
		return "the broker is at a limit: " + re.Message
	case errors.Is(err, ErrUnauthorized):
		return "ticket refused by the broker"
	case errors.Is(err, ErrBrokerDown):
		return "broker unreachable"
	case errors.Is(err, ErrPeerGone):
		return "the sharer went offline"
	}
	// Errors of every path tried come one per line: the first says enough.
	first, _, _ := strings.Cut(err.Error(), "\n")
	return first
}

// gaveUp is the error of a connect that did not reach its share in d.
func gaveUp(share string, d time.Duration, last error) error {
	if last == nil {
		return fmt.Errorf("share %s: %w after %v", share, ErrGaveUp, d)
	}
	return fmt.Errorf("share %s: %w after %v: %s: %w", share, ErrGaveUp, d, waitingFor(last), last)
}
