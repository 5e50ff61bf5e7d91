// TURN REST credentials, as in draft-uberti-behave-turn-rest and coturn's
// use-auth-secret, so a broker's embedded relay and an external coturn take
// the same ones:
//
//	username = "<expiry, unix seconds>:<agent ID>"
//	password = base64(HMAC-SHA1(shared secret, username))
//
// The TURN long-term key is then MD5(username ":" realm ":" password), as for
// any TURN user. Whoever holds the shared secret (the broker, or an agent
// configured with an external server's secret) mints credentials; the server
// recomputes the password from the username, so it keeps no user list.

package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST passwords are HMAC-SHA1 by definition.
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrBadUsername is returned by ParseUsername for anything that is not
// "EXPIRY:AGENTID".
var ErrBadUsername = errors.New("not a TURN REST username (want EXPIRY:AGENTID)")

// credMaxIDLen bounds the agent ID part; real ones are 52 characters.
const credMaxIDLen = 256

// Credentials returns a TURN REST credential for agentID that expires at
// expires (whole seconds; sub-second parts are dropped).
func Credentials(secret []byte, agentID string, expires time.Time) (username, password string) {
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + agentID
	return username, Password(secret, username)
}

// Password is the TURN REST password of username under secret:
// base64(HMAC-SHA1(secret, username)).
func Password(secret []byte, username string) string {
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// ParseUsername splits a TURN REST username into its expiry and agent ID.
// The expiry is decimal Unix seconds without sign or leading zeros, so that
// a username that parses is exactly the one Credentials makes for it. The
// agent ID is everything after the first colon: non-empty, at most 256
// bytes of UTF-8 without spaces or control characters. It is not checked
// to be a valid peerport agent ID; callers that need one parse it.
func ParseUsername(u string) (expires time.Time, agentID string, err error) {
	ts, id, ok := strings.Cut(u, ":")
	if !ok {
		return time.Time{}, "", fmt.Errorf("%w: no colon", ErrBadUsername)
	}
	if ts == "" || len(ts) > 19 || strings.Trim(ts, "0123456789") != "" || (len(ts) > 1 && ts[0] == '0') {
		return time.Time{}, "", fmt.Errorf("%w: expiry %q is not Unix seconds", ErrBadUsername, credShort(ts))
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("%w: expiry %q is out of range", ErrBadUsername, credShort(ts))
	}
	if id == "" || len(id) > credMaxIDLen || !utf8.ValidString(id) ||
		strings.ContainsFunc(id, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return time.Time{}, "", fmt.Errorf("%w: bad agent ID %q", ErrBadUsername, credShort(id))
	}
	return time.Unix(n, 0), id, nil
}

// credShort shortens a value quoted in an error.
func credShort(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}
